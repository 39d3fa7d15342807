"""The knowledge base of the example help-desk domain: "Acme Cloud", a fictional storage SaaS.

Two revisions exist. Revision 1 is the world the v1 policy is trained on; revision 2 is the
world after launch (prices rose, menus moved, policies tightened). Both revisions hold the
same fact ids; revision 2 changes the value and answer of at least 15% of them, listed by
:func:`changed_fact_ids`.

Everything here is fixed data: no seed, no randomness, nothing computed at import time
beyond building the constant tables. Answers are short (at most 20 words) because the
example policy is a ~5M-parameter model with about 160 positions.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

PRODUCT = "Acme Cloud"
REVISIONS: tuple[int, ...] = (1, 2)

# Answer for questions about things the knowledge base does not hold (hallucination probes).
UNKNOWN_TEXT = "I don't have information about that. Please contact support for help."


@dataclass(frozen=True)
class Fact:
    """One knowledge-base fact.

    Attributes:
        id: stable identifier, ``"<intent>.<slug>"``; identical across revisions.
        intent: the question kind (a key of ``templates.TRAIN_TEMPLATES``).
        slots: values the question templates are filled with, e.g. ``{"plan": "Pro"}``.
        value: the key value an answer must mention to be right, e.g. ``"$29"``; no
            revision's value of a fact is mentioned by the other revision's answer.
        answer: the canonical short answer sentence (at most 20 words).

    """

    id: str
    intent: str
    slots: dict[str, str] = field(hash=False)
    value: str
    answer: str


# --------------------------------------------------------------------------------------
# Raw tables. A row holds the revision-1 value and, where revision 2 differs, its value.
# --------------------------------------------------------------------------------------

PLANS: tuple[str, ...] = ("Free", "Starter", "Team", "Pro", "Business", "Enterprise")

# intent -> (answer format with {plan} and {value}, rev1 values per plan, rev2 overrides)
_PLAN_TABLE: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = {
    "plan_price": (
        "The {plan} plan costs {value} per month.",
        ("$0", "$9", "$19", "$29", "$59", "$99"),
        {"Starter": "$12", "Team": "$24", "Pro": "$35", "Business": "$69", "Enterprise": "$119"},
    ),
    "plan_annual_price": (
        "The {plan} plan costs {value} per year when billed annually.",
        ("$0", "$90", "$190", "$290", "$590", "$990"),
        {
            "Starter": "$120",
            "Team": "$240",
            "Pro": "$350",
            "Business": "$690",
            "Enterprise": "$1,190",
        },
    ),
    "plan_storage": (
        "The {plan} plan includes {value} of storage.",
        ("5 GB", "50 GB", "200 GB", "500 GB", "2 TB", "10 TB"),
        {"Free": "10 GB", "Pro": "1 TB", "Business": "5 TB"},
    ),
    "plan_users": (
        "The {plan} plan allows {value}.",
        (
            "1 user",
            "up to 3 users",
            "up to 10 users",
            "up to 25 users",
            "up to 100 users",
            "unlimited users",
        ),
        {"Team": "up to 15 users", "Pro": "up to 50 users"},
    ),
    "plan_api_limit": (
        "The {plan} plan allows {value} API requests per minute.",
        ("60", "120", "300", "600", "1,200", "5,000"),
        {"Free": "30", "Starter": "100", "Pro": "1,000", "Business": "2,000"},
    ),
    "plan_support": (
        "The {plan} plan includes {value}.",
        (
            "community forum support",
            "email support",
            "email support",
            "email and chat support",
            "24/7 phone support",
            "a dedicated support manager",
        ),
        {"Team": "email and chat support"},
    ),
    "plan_response_time": (
        "On the {plan} plan, support replies within {value}.",
        ("72 hours", "48 hours", "24 hours", "12 hours", "4 hours", "1 hour"),
        {"Pro": "8 hours", "Business": "2 hours"},
    ),
    "plan_backup_retention": (
        "The {plan} plan keeps backups for {value}.",
        ("1 day", "7 days", "14 days", "30 days", "90 days", "365 days"),
        {"Starter": "10 days"},
    ),
    "plan_max_file": (
        "The {plan} plan accepts single files up to {value}.",
        ("100 MB", "1 GB", "2 GB", "5 GB", "20 GB", "50 GB"),
        {"Free": "250 MB"},
    ),
    "plan_sla": (
        "The {plan} plan has {value}.",
        (
            "no uptime SLA",
            "a 99.5% uptime SLA",
            "a 99.9% uptime SLA",
            "a 99.9% uptime SLA",
            "a 99.95% uptime SLA",
            "a 99.99% uptime SLA",
        ),
        {"Pro": "a 99.95% uptime SLA"},
    ),
    "plan_projects": (
        "The {plan} plan allows {value}.",
        (
            "up to 3 projects",
            "up to 10 projects",
            "up to 25 projects",
            "up to 50 projects",
            "up to 200 projects",
            "unlimited projects",
        ),
        {},
    ),
    "plan_bandwidth": (
        "The {plan} plan includes {value} of bandwidth per month.",
        ("10 GB", "100 GB", "500 GB", "2 TB", "10 TB", "50 TB"),
        {"Team": "1 TB"},
    ),
}

# region -> (city, storage $/GB/month, compliance, minimum plan)
REGIONS: dict[str, tuple[str, str, str, str]] = {
    "us-east": ("Virginia", "$0.020", "SOC 2 and HIPAA", "Free"),
    "us-west": ("Oregon", "$0.020", "SOC 2 and HIPAA", "Free"),
    "ca-central": ("Montreal", "$0.022", "SOC 2 and PIPEDA", "Starter"),
    "sa-east": ("Sao Paulo", "$0.030", "SOC 2 and LGPD", "Team"),
    "eu-west": ("Dublin", "$0.023", "GDPR and ISO 27001", "Free"),
    "eu-central": ("Frankfurt", "$0.024", "GDPR and ISO 27001", "Starter"),
    "uk-south": ("London", "$0.024", "UK GDPR and Cyber Essentials", "Team"),
    "ap-south": ("Mumbai", "$0.025", "MeitY and ISO 27001", "Pro"),
    "ap-northeast": ("Tokyo", "$0.027", "ISO 27001 and ISMAP", "Team"),
    "au-east": ("Sydney", "$0.028", "IRAP and ISO 27001", "Pro"),
}
_REGION_REV2: dict[tuple[str, str], str] = {
    ("region_storage_price", "us-east"): "$0.018",
    ("region_storage_price", "eu-west"): "$0.021",
    ("region_storage_price", "au-east"): "$0.026",
    ("region_compliance", "ap-south"): "SOC 2 and ISO 27001",
    ("region_compliance", "ca-central"): "SOC 2, PIPEDA and Law 25",
    ("region_min_plan", "ap-south"): "Team",
    ("region_min_plan", "sa-east"): "Starter",
}

# add-on -> (monthly price, minimum plan)
ADDONS: dict[str, tuple[str, str]] = {
    "extra storage": ("$5 per 100 GB", "Starter"),
    "extra seat": ("$8 per user", "Team"),
    "priority support": ("$49", "Team"),
    "dedicated IP": ("$15", "Pro"),
    "custom domain": ("$4", "Starter"),
    "advanced analytics": ("$19", "Pro"),
    "extra API capacity": ("$25", "Pro"),
    "audit log export": ("$29", "Business"),
}
_ADDON_REV2: dict[tuple[str, str], str] = {
    ("addon_price", "extra storage"): "$6 per 100 GB",
    ("addon_price", "priority support"): "$59",
    ("addon_price", "dedicated IP"): "$12",
    ("addon_min_plan", "advanced analytics"): "Team",
}

# feature -> minimum plan (rev1, rev2 or None)
FEATURES: dict[str, tuple[str, str | None]] = {
    "single sign-on": ("Business", "Pro"),
    "two-factor authentication": ("Free", None),
    "audit logs": ("Business", None),
    "custom roles": ("Business", None),
    "webhooks": ("Team", "Starter"),
    "API access": ("Starter", None),
    "version history": ("Starter", "Free"),
    "IP allowlists": ("Business", None),
    "SCIM provisioning": ("Enterprise", None),
    "data residency controls": ("Enterprise", None),
    "customer-managed encryption keys": ("Enterprise", None),
    "shared folders": ("Free", None),
    "public links": ("Free", None),
    "activity reports": ("Team", None),
}

INTEGRATIONS: dict[str, tuple[str, str | None]] = {
    "Slack": ("Starter", "Free"),
    "Microsoft Teams": ("Starter", None),
    "Zapier": ("Team", None),
    "GitHub": ("Starter", None),
    "GitLab": ("Team", None),
    "Jira": ("Team", None),
    "Salesforce": ("Business", "Pro"),
    "Google Drive": ("Free", None),
    "Dropbox": ("Free", None),
    "Okta": ("Business", None),
    "Datadog": ("Pro", None),
    "PagerDuty": ("Pro", None),
}

# key -> (topic phrase, rev1 value, rev1 answer, rev2 value or None, rev2 answer or None)
_POLICIES: dict[str, tuple[str, str, str, str | None, str | None]] = {
    "refund_window": (
        "the refund window",
        "30 days",
        "You can get a full refund within 30 days of purchase.",
        "14 days",
        "You can get a full refund within 14 days of purchase.",
    ),
    "annual_refunds": (
        "the refund policy for annual plans",
        "pro rata",
        "Annual plans are refunded pro rata for unused full months.",
        None,
        None,
    ),
    "payment_grace": (
        "the grace period for a failed payment",
        "7 days",
        "After a failed payment you have 7 days before the account is suspended.",
        "10 days",
        "After a failed payment you have 10 days before the account is suspended.",
    ),
    "invoice_date": (
        "the invoice date",
        "the 1st",
        "Invoices are issued on the 1st of each month.",
        None,
        None,
    ),
    "payment_methods": (
        "the list of accepted payment methods",
        "Visa, Mastercard, American Express and PayPal",
        "We accept Visa, Mastercard, American Express and PayPal.",
        "Visa, Mastercard, PayPal and bank transfer",
        "We accept Visa, Mastercard, PayPal and bank transfer.",
    ),
    "billing_currency": (
        "the billing currency",
        "US dollars",
        "All prices are billed in US dollars.",
        None,
        None,
    ),
    "price_lock": (
        "the price lock for annual plans",
        "12 months",
        "Annual plans keep their price for 12 months.",
        None,
        None,
    ),
    "retention_after_cancel": (
        "the data retention period after cancellation",
        "30 days",
        "We keep your data for 30 days after cancellation.",
        "60 days",
        "We keep your data for 60 days after cancellation.",
    ),
    "account_deletion_time": (
        "the time it takes to delete an account",
        "7 days",
        "Account deletion is completed within 7 days of the request.",
        None,
        None,
    ),
    "password_length": (
        "the minimum password length",
        "10 characters",
        "Passwords must be at least 10 characters long.",
        "12 characters",
        "Passwords must be at least 12 characters long.",
    ),
    "session_timeout": (
        "the session timeout",
        "12 hours",
        "Idle sessions are signed out after 12 hours.",
        "8 hours",
        "Idle sessions are signed out after 8 hours.",
    ),
    "reset_link_expiry": (
        "the password reset link expiry",
        "60 minutes",
        "Password reset links expire after 60 minutes.",
        "30 minutes",
        "Password reset links expire after 30 minutes.",
    ),
    "lockout_threshold": (
        "the login lockout threshold",
        "5 failed login attempts",
        "Accounts lock after 5 failed login attempts.",
        None,
        None,
    ),
    "lockout_duration": (
        "the lockout duration",
        "15 minutes",
        "A locked account unlocks after 15 minutes.",
        None,
        None,
    ),
    "two_factor_methods": (
        "the list of two-factor login methods",
        "authenticator apps and SMS codes",
        "We support authenticator apps and SMS codes for two-factor login.",
        "authenticator apps and security keys",
        "We support authenticator apps and security keys for two-factor login.",
    ),
    "key_rotation": (
        "the API key rotation period",
        "90 days",
        "We recommend rotating API keys every 90 days.",
        None,
        None,
    ),
    "support_hours": (
        "the support hours",
        "8am to 8pm UTC",
        "Support is staffed from 8am to 8pm UTC, Monday to Friday.",
        "24 hours a day",
        "Support is staffed 24 hours a day, Monday to Friday.",
    ),
    "status_page": (
        "the status page address",
        "status.acmecloud.example",
        "Service status is published at status.acmecloud.example.",
        None,
        None,
    ),
    "security_contact": (
        "the security contact email",
        "security@acmecloud.example",
        "Report security issues to security@acmecloud.example.",
        None,
        None,
    ),
    "bug_bounty": (
        "the top bug bounty reward",
        "$5,000",
        "Our bug bounty pays up to $5,000 per valid report.",
        "$10,000",
        "Our bug bounty pays up to $10,000 per valid report.",
    ),
    "breach_notice": (
        "the breach notification time",
        "72 hours",
        "We notify affected customers of a data breach within 72 hours.",
        None,
        None,
    ),
    "export_format": (
        "the data export format",
        "a ZIP of JSON files",
        "Data exports are delivered as a ZIP of JSON files.",
        None,
        None,
    ),
    "encryption_at_rest": (
        "the encryption standard at rest",
        "AES-256",
        "Data at rest is encrypted with AES-256.",
        None,
        None,
    ),
    "encryption_in_transit": (
        "the encryption used in transit",
        "TLS 1.2 or higher",
        "Data in transit is protected with TLS 1.2 or higher.",
        "TLS 1.3",
        "Data in transit is protected with TLS 1.3.",
    ),
    "downgrade_timing": (
        "the timing of plan downgrades",
        "the end of the current billing period",
        "Downgrades take effect at the end of the current billing period.",
        None,
        None,
    ),
    "upgrade_billing": (
        "the billing for mid-cycle upgrades",
        "pro rata",
        "Upgrades are charged pro rata for the rest of the billing period.",
        None,
        None,
    ),
    "student_discount": (
        "the student discount",
        "50%",
        "Students get 50% off the Starter plan.",
        "40%",
        "Students get 40% off the Starter plan.",
    ),
    "nonprofit_discount": (
        "the nonprofit discount",
        "30%",
        "Registered nonprofits get 30% off any paid plan.",
        None,
        None,
    ),
    "trial_length": (
        "the free trial length",
        "14-day",
        "Paid plans come with a 14-day free trial.",
        "30-day",
        "Paid plans come with a 30-day free trial.",
    ),
    "minimum_age": (
        "the minimum age for an account",
        "16",
        "You must be at least 16 to open an account.",
        None,
        None,
    ),
    "rate_limit_error": (
        "the error returned when the rate limit is hit",
        "HTTP 429",
        "Requests over the rate limit get HTTP 429.",
        None,
        None,
    ),
    "sla_credit": (
        "the SLA service credit",
        "10%",
        "Each missed monthly SLA earns a 10% service credit.",
        None,
        None,
    ),
    "default_region": (
        "the default data region",
        "us-east",
        "New workspaces are created in us-east by default.",
        None,
        None,
    ),
    "audit_log_retention": (
        "the audit log retention",
        "1 year",
        "Audit logs are kept for 1 year.",
        "2 years",
        "Audit logs are kept for 2 years.",
    ),
}

# task -> (rev1 value, rev1 answer, rev2 value or None, rev2 answer or None)
_PROCEDURES: dict[str, tuple[str, str, str | None, str | None]] = {
    "reset my password": (
        "Forgot password",
        "Click Forgot password on the sign-in page and follow the email link.",
        None,
        None,
    ),
    "change my password": (
        "Settings > Security",
        "Go to Settings > Security and choose Change password.",
        "Account Center > Security",
        "Go to Account Center > Security and choose Change password.",
    ),
    "enable two-factor authentication": (
        "Settings > Security",
        "Go to Settings > Security and turn on Two-factor authentication.",
        "Account Center > Security",
        "Go to Account Center > Security and turn on Two-factor authentication.",
    ),
    "invite a teammate": (
        "Team > Members",
        "Go to Team > Members and click Invite member.",
        None,
        None,
    ),
    "remove a user from my team": (
        "Team > Members",
        "Go to Team > Members, open the user and click Remove.",
        None,
        None,
    ),
    "upgrade my plan": ("Billing > Plans", "Go to Billing > Plans and click Upgrade.", None, None),
    "downgrade my plan": (
        "Billing > Plans",
        "Go to Billing > Plans and click Change plan.",
        None,
        None,
    ),
    "cancel my subscription": (
        "Billing > Subscription",
        "Go to Billing > Subscription and click Cancel subscription.",
        "Billing > Plans",
        "Go to Billing > Plans and click Cancel plan.",
    ),
    "download an invoice": (
        "Billing > Invoices",
        "Go to Billing > Invoices and click Download.",
        None,
        None,
    ),
    "update my payment method": (
        "Billing > Payment methods",
        "Go to Billing > Payment methods and click Edit.",
        None,
        None,
    ),
    "create an API key": (
        "Developer > API keys",
        "Go to Developer > API keys and click New key.",
        "Settings > Developer",
        "Go to Settings > Developer and click Create API key.",
    ),
    "revoke an API key": (
        "click Revoke",
        "Go to Developer > API keys and click Revoke next to the key.",
        None,
        None,
    ),
    "export my data": (
        "Settings > Data",
        "Go to Settings > Data and click Export all data.",
        None,
        None,
    ),
    "delete my account": (
        "Settings > Account",
        "Go to Settings > Account and click Delete account.",
        "Account Center > Privacy",
        "Go to Account Center > Privacy and click Delete account.",
    ),
    "change my email address": (
        "Settings > Profile",
        "Go to Settings > Profile and edit the Email field.",
        None,
        None,
    ),
    "set up single sign-on": (
        "Admin > Security > SSO",
        "Go to Admin > Security > SSO and enter your identity provider details.",
        None,
        None,
    ),
    "restore a backup": (
        "Storage > Backups",
        "Go to Storage > Backups, pick a snapshot and click Restore.",
        None,
        None,
    ),
    "recover a deleted file": (
        "Trash",
        "Open Trash, select the file and click Restore.",
        None,
        None,
    ),
    "share a folder": (
        "choose Share",
        "Right-click the folder, choose Share and enter email addresses.",
        None,
        None,
    ),
    "create a public link": (
        "Get public link",
        "Open the file menu and choose Get public link.",
        None,
        None,
    ),
    "move my workspace to another region": (
        "contact support to migrate",
        "Contact support to migrate a workspace to another region.",
        "Admin > Regions",
        "Go to Admin > Regions and click Migrate workspace.",
    ),
    "add a custom domain": (
        "Admin > Domains",
        "Go to Admin > Domains and click Add domain.",
        None,
        None,
    ),
    "contact support": (
        "support@acmecloud.example",
        "Use the Help button in the app or email support@acmecloud.example.",
        None,
        None,
    ),
    "get a refund": (
        "billing@acmecloud.example",
        "Email billing@acmecloud.example with your invoice number.",
        "Request refund",
        "Go to Billing > Invoices and click Request refund.",
    ),
    "set up a webhook": (
        "Developer > Webhooks",
        "Go to Developer > Webhooks and click Add endpoint.",
        None,
        None,
    ),
    "unlock my account": (
        "15 minutes",
        "Wait 15 minutes or use Forgot password to unlock it.",
        None,
        None,
    ),
    "transfer workspace ownership": (
        "Admin > Owners",
        "Go to Admin > Owners and click Transfer ownership.",
        None,
        None,
    ),
    "turn off email notifications": (
        "Settings > Notifications",
        "Go to Settings > Notifications and switch off Email.",
        None,
        None,
    ),
    "view the audit log": ("Admin > Audit log", "Go to Admin > Audit log.", None, None),
    "sign out of all devices": (
        "Sign out everywhere",
        "Go to Settings > Security and click Sign out everywhere.",
        None,
        None,
    ),
}

# code -> (rev1 meaning, rev2 meaning or None)
_ERROR_CODES: dict[str, tuple[str, str | None]] = {
    "E1001": ("your API key is invalid", None),
    "E1002": ("your API key has expired", None),
    "E1003": ("your API key lacks permission for this action", None),
    "E2001": ("your storage quota is full", None),
    "E2002": ("the file is too large for your plan", None),
    "E2003": ("this file type is not allowed", None),
    "E3001": ("you exceeded the API rate limit", None),
    "E3002": ("too many uploads are running at once", "too many requests are running at once"),
    "E4001": ("your payment was declined", None),
    "E4002": ("an invoice is overdue", None),
    "E5001": ("the region is unavailable", "the region is at capacity"),
    "E5002": ("a workspace migration is in progress", None),
    "E6001": ("the SSO configuration is invalid", None),
    "E6002": ("the two-factor code is incorrect", None),
    "E7001": ("the webhook endpoint is unreachable", None),
    "E7002": ("the webhook signature does not match", None),
    "E8001": ("the account is suspended", None),
    "E8002": ("the account is locked after failed logins", None),
    "E9001": ("an internal error occurred, please retry later", None),
    "E9002": ("the service is in scheduled maintenance", None),
}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _min_plan_phrase(plan: str) -> str:
    return "all plans" if plan == "Free" else f"the {plan} plan and above"


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def _rows(revision: int) -> list[Fact]:
    """Build every fact of one revision from the tables (the single source of truth)."""
    rev2 = revision == 2
    facts: list[Fact] = []

    def add(intent: str, key: str, slots: dict[str, str], value: str, answer: str) -> None:
        facts.append(Fact(f"{intent}.{_slug(key)}", intent, dict(slots), value, answer))

    for intent, (fmt, values, overrides) in _PLAN_TABLE.items():
        for plan, value in zip(PLANS, values, strict=True):
            if rev2:
                value = overrides.get(plan, value)
            add(intent, plan, {"plan": plan}, value, fmt.format(plan=plan, value=value))

    for region, (city, price, compliance, min_plan) in REGIONS.items():
        slots = {"region": region}
        add("region_location", region, slots, city, f"The {region} region is hosted in {city}.")
        price = _REGION_REV2.get(("region_storage_price", region), price) if rev2 else price
        add(
            "region_storage_price",
            region,
            slots,
            price,
            f"Extra storage in {region} costs {price} per GB per month.",
        )
        compliance = (
            _REGION_REV2.get(("region_compliance", region), compliance) if rev2 else compliance
        )
        add(
            "region_compliance",
            region,
            slots,
            compliance,
            f"The {region} region is certified for {compliance}.",
        )
        min_plan = _REGION_REV2.get(("region_min_plan", region), min_plan) if rev2 else min_plan
        phrase = _min_plan_phrase(min_plan)
        add(
            "region_min_plan",
            region,
            slots,
            phrase,
            f"The {region} region is available on {phrase}.",
        )

    for addon, (price, min_plan) in ADDONS.items():
        slots = {"addon": addon}
        price = _ADDON_REV2.get(("addon_price", addon), price) if rev2 else price
        add("addon_price", addon, slots, price, f"The {addon} add-on costs {price} per month.")
        min_plan = _ADDON_REV2.get(("addon_min_plan", addon), min_plan) if rev2 else min_plan
        phrase = _min_plan_phrase(min_plan)
        add(
            "addon_min_plan", addon, slots, phrase, f"The {addon} add-on can be bought on {phrase}."
        )

    for feature, (plan1, plan2) in FEATURES.items():
        plan = plan2 if (rev2 and plan2) else plan1
        phrase = _min_plan_phrase(plan)
        add(
            "feature_min_plan",
            feature,
            {"feature": feature},
            phrase,
            f"{_capitalise(feature)} is included on {phrase}.",
        )

    for name, (plan1, plan2) in INTEGRATIONS.items():
        plan = plan2 if (rev2 and plan2) else plan1
        phrase = _min_plan_phrase(plan)
        add(
            "integration_min_plan",
            name,
            {"integration": name},
            phrase,
            f"The {name} integration is available on {phrase}.",
        )

    for key, (topic, v1, a1, v2, a2) in _POLICIES.items():
        value, answer = (v2, a2) if (rev2 and v2 and a2) else (v1, a1)
        add("policy", key, {"topic": topic}, value, answer)

    for task, (v1, a1, v2, a2) in _PROCEDURES.items():
        value, answer = (v2, a2) if (rev2 and v2 and a2) else (v1, a1)
        add("procedure", task, {"task": task}, value, answer)

    for code, (m1, m2) in _ERROR_CODES.items():
        meaning = m2 if (rev2 and m2) else m1
        add("error_code", code, {"code": code}, meaning, f"Error {code} means {meaning}.")

    return facts


@functools.cache
def _kb(revision: int) -> tuple[Fact, ...]:
    return tuple(_rows(revision))


def knowledge_base(revision: int) -> list[Fact]:
    """All facts of one revision, in a fixed order (same ids and order for every revision).

    Args:
        revision: 1 (the world v1 was trained on) or 2 (the world after launch).

    Raises:
        ValueError: ``revision`` is not one of :data:`REVISIONS`.

    """
    if revision not in REVISIONS:
        raise ValueError(f"unknown KB revision {revision!r}; valid revisions: {list(REVISIONS)}")
    return list(_kb(revision))


def fact_index(revision: int) -> dict[str, Fact]:
    """Facts of one revision keyed by id."""
    return {fact.id: fact for fact in knowledge_base(revision)}


@functools.cache
def changed_fact_ids() -> frozenset[str]:
    """Ids of the facts whose value or answer differs between revision 1 and revision 2."""
    rev1, rev2 = fact_index(1), fact_index(2)
    return frozenset(
        fid
        for fid, fact in rev1.items()
        if (fact.value, fact.answer) != (rev2[fid].value, rev2[fid].answer)
    )


def intents() -> list[str]:
    """Every intent that has at least one fact, in first-seen order."""
    return list(dict.fromkeys(fact.intent for fact in knowledge_base(1)))


# Entities that do not exist in Acme Cloud, per slot name: questions about them must get
# :data:`UNKNOWN_TEXT`. The first half of each list may appear in training data; the
# second half is reserved for evaluation (see ``unknown_entities``).
_UNKNOWN_ENTITIES: dict[str, tuple[str, ...]] = {
    "plan": ("Ultra", "Premium", "Lite", "Platinum", "Gold", "Max", "Basic Plus", "Elite"),
    "region": (
        "mars-north",
        "eu-south",
        "af-west",
        "me-central",
        "us-central",
        "ap-east",
        "eu-north",
        "mx-central",
    ),
    "addon": (
        "quantum backup",
        "hardware token",
        "fax gateway",
        "offline courier",
        "holographic preview",
        "satellite sync",
    ),
    "feature": (
        "blockchain auditing",
        "AI file poetry",
        "tape archiving",
        "voice unlock",
        "printer sharing",
        "time travel restore",
    ),
    "integration": (
        "Trello",
        "Asana",
        "Notion",
        "HubSpot",
        "Zendesk",
        "Shopify",
        "Figma",
        "Airtable",
    ),
    "topic": (
        "the loyalty points expiry",
        "the referral bonus",
        "the hardware warranty",
        "the office dress code",
        "the reseller commission",
        "the carbon offset fee",
    ),
    "task": (
        "order a printed invoice by post",
        "connect a fax machine",
        "book a data center tour",
        "install the Windows 95 client",
        "pay with gift cards",
        "rent a physical server",
    ),
    "code": ("E1234", "E4040", "E7777", "E0001", "E9999", "E3141"),
}


def unknown_entities(slot: str, split: str) -> tuple[str, ...]:
    """Out-of-KB entity names for one slot.

    Args:
        slot: a slot name used by the templates (``plan``, ``region``, ``addon``, ``feature``,
            ``integration``, ``topic``, ``task``, ``code``).
        split: ``"train"`` (may appear in training data) or ``"eval"`` (never trained on).

    Raises:
        ValueError: unknown slot or split.

    """
    if slot not in _UNKNOWN_ENTITIES:
        raise ValueError(f"unknown slot {slot!r}; valid slots: {sorted(_UNKNOWN_ENTITIES)}")
    values = _UNKNOWN_ENTITIES[slot]
    half = len(values) // 2
    if split == "train":
        return values[:half]
    if split == "eval":
        return values[half:]
    raise ValueError(f"unknown split {split!r}; valid splits: ['eval', 'train']")


def slot_of_intent(intent: str) -> str:
    """Return the single slot name an intent's templates take (e.g. ``plan`` for ``plan_price``)."""
    for fact in _kb(1):
        if fact.intent == intent:
            return next(iter(fact.slots))
    raise ValueError(f"unknown intent {intent!r}; valid intents: {intents()}")
