"""Question paraphrase templates per intent: a training set and a held-out set.

Held-out templates exist to measure generalisation honestly: no training output (SFT text,
guard prompts, preference pairs, simulated production traffic) is ever rendered from them.
They deliberately use wording ("tier", "if I ...") that the training templates avoid, so a
model cannot pass them by memorising a training string.

Each template takes exactly one slot, named by :func:`examples.helpdesk.kb.slot_of_intent`.
"""

from __future__ import annotations

import string
from typing import Literal

from examples.helpdesk.kb import Fact

Split = Literal["train", "heldout"]
SPLITS: tuple[str, ...] = ("train", "heldout")

TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plan_price": (
        "How much does the {plan} plan cost?",
        "What is the price of the {plan} plan?",
        "What's the monthly price for {plan}?",
        "How much is the {plan} plan per month?",
        "What does the {plan} plan cost each month?",
        "{plan} plan price per month?",
    ),
    "plan_annual_price": (
        "How much does the {plan} plan cost per year?",
        "What is the annual price of the {plan} plan?",
        "What's the yearly price for {plan}?",
        "How much is {plan} if I pay annually?",
        "What does the {plan} plan cost with annual billing?",
        "{plan} plan price per year?",
    ),
    "plan_storage": (
        "How much storage does the {plan} plan include?",
        "What is the storage limit on the {plan} plan?",
        "How much space do I get with {plan}?",
        "What's the storage quota for the {plan} plan?",
        "How many GB of storage come with {plan}?",
        "{plan} plan storage limit?",
    ),
    "plan_users": (
        "How many users does the {plan} plan allow?",
        "What is the user limit on the {plan} plan?",
        "How many people can use the {plan} plan?",
        "How many seats come with {plan}?",
        "What's the maximum number of users on {plan}?",
        "{plan} plan user limit?",
    ),
    "plan_api_limit": (
        "What is the API rate limit on the {plan} plan?",
        "How many API requests per minute does {plan} allow?",
        "What's the API limit for the {plan} plan?",
        "How many API calls can I make on {plan}?",
        "What is the request limit of the {plan} plan?",
        "{plan} plan API rate limit?",
    ),
    "plan_support": (
        "What support does the {plan} plan include?",
        "What kind of support do I get with {plan}?",
        "Which support channels come with the {plan} plan?",
        "What is the support level on {plan}?",
        "What support is offered on the {plan} plan?",
        "{plan} plan support options?",
    ),
    "plan_response_time": (
        "How fast does support reply on the {plan} plan?",
        "What is the support response time for {plan}?",
        "How long does support take to answer on {plan}?",
        "What's the response time on the {plan} plan?",
        "How quickly will support respond if I'm on {plan}?",
        "{plan} plan support response time?",
    ),
    "plan_backup_retention": (
        "How long are backups kept on the {plan} plan?",
        "What is the backup retention for {plan}?",
        "How many days of backups does {plan} keep?",
        "How long does the {plan} plan keep backups?",
        "What's the backup history on {plan}?",
        "{plan} plan backup retention?",
    ),
    "plan_max_file": (
        "What is the maximum file size on the {plan} plan?",
        "How big can a single file be on {plan}?",
        "What's the upload size limit for the {plan} plan?",
        "What is the largest file I can upload on {plan}?",
        "How large can uploads be on the {plan} plan?",
        "{plan} plan max file size?",
    ),
    "plan_sla": (
        "What is the uptime SLA for the {plan} plan?",
        "Does the {plan} plan have an SLA?",
        "What uptime does {plan} guarantee?",
        "What's the SLA on the {plan} plan?",
        "What availability is promised on {plan}?",
        "{plan} plan uptime guarantee?",
    ),
    "plan_projects": (
        "How many projects does the {plan} plan allow?",
        "What is the project limit on {plan}?",
        "How many projects can I create on the {plan} plan?",
        "What's the maximum number of projects on {plan}?",
        "Is there a project limit on the {plan} plan?",
        "{plan} plan project limit?",
    ),
    "plan_bandwidth": (
        "How much bandwidth does the {plan} plan include?",
        "What is the monthly bandwidth on {plan}?",
        "How much data transfer do I get with the {plan} plan?",
        "What's the bandwidth limit for {plan}?",
        "How much traffic is included in the {plan} plan?",
        "{plan} plan bandwidth?",
    ),
    "region_location": (
        "Where is the {region} region located?",
        "Where is {region} hosted?",
        "Which city is the {region} region in?",
        "Where are the {region} data centers?",
        "What is the location of the {region} region?",
        "{region} region location?",
    ),
    "region_storage_price": (
        "How much does extra storage cost in {region}?",
        "What is the storage price in the {region} region?",
        "What's the price per GB in {region}?",
        "How much is storage per GB in the {region} region?",
        "What does extra storage in {region} cost?",
        "{region} storage price per GB?",
    ),
    "region_compliance": (
        "What certifications does the {region} region have?",
        "Which compliance standards does {region} meet?",
        "Is the {region} region certified?",
        "What compliance does the {region} region support?",
        "Which certifications apply to {region}?",
        "{region} region compliance?",
    ),
    "region_min_plan": (
        "Which plans can use the {region} region?",
        "What plan do I need for the {region} region?",
        "Is the {region} region available on my plan?",
        "Which plan unlocks {region}?",
        "What is the minimum plan for {region}?",
        "{region} region plan requirement?",
    ),
    "addon_price": (
        "How much does the {addon} add-on cost?",
        "What is the price of the {addon} add-on?",
        "What's the monthly cost of {addon}?",
        "How much is the {addon} add-on per month?",
        "What does {addon} cost?",
        "{addon} add-on price?",
    ),
    "addon_min_plan": (
        "Which plans can buy the {addon} add-on?",
        "What plan do I need for the {addon} add-on?",
        "Can I get {addon} on my plan?",
        "What is the minimum plan for the {addon} add-on?",
        "Which plan lets me add {addon}?",
        "{addon} add-on plan requirement?",
    ),
    "feature_min_plan": (
        "Which plans include {feature}?",
        "What plan do I need for {feature}?",
        "Is {feature} included in my plan?",
        "What is the minimum plan for {feature}?",
        "Which plan gives me {feature}?",
        "{feature} plan requirement?",
    ),
    "integration_min_plan": (
        "Does Acme Cloud integrate with {integration}?",
        "Which plans include the {integration} integration?",
        "What plan do I need for the {integration} integration?",
        "Can I connect {integration} to my account?",
        "Is the {integration} integration available on my plan?",
        "{integration} integration plan requirement?",
    ),
    "policy": (
        "What is {topic}?",
        "Can you tell me {topic}?",
        "What's {topic} at Acme Cloud?",
        "I'd like to know {topic}.",
        "Please tell me {topic}.",
        "Remind me, what is {topic}?",
    ),
    "procedure": (
        "How do I {task}?",
        "How can I {task}?",
        "What are the steps to {task}?",
        "I need to {task}. What should I do?",
        "Can you explain how to {task}?",
        "Where do I go to {task}?",
    ),
    "error_code": (
        "What does error {code} mean?",
        "I got error code {code}. What is it?",
        "What is error {code}?",
        "Why am I seeing error {code}?",
        "Can you explain error {code}?",
        "{code} error meaning?",
    ),
}

HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "plan_price": (
        "If I sign up for {plan}, what will I pay monthly?",
        "What would the {plan} tier set me back every month?",
        "Monthly fee for the {plan} tier?",
    ),
    "plan_annual_price": (
        "If I commit to {plan} for twelve months, what's the total?",
        "What's the bill for a year of the {plan} tier paid upfront?",
        "Annual fee for the {plan} tier?",
    ),
    "plan_storage": (
        "If I'm on {plan}, how much data can I keep in total?",
        "What's the disk allowance of the {plan} tier?",
        "Total capacity for files on the {plan} tier?",
    ),
    "plan_users": (
        "If my team joins {plan}, how many members can we have?",
        "What's the headcount cap of the {plan} tier?",
        "Team size allowed on the {plan} tier?",
    ),
    "plan_api_limit": (
        "If I'm on {plan}, how fast can my app hit the API?",
        "What's the per-minute call ceiling of the {plan} tier?",
        "Throttle threshold for the {plan} tier?",
    ),
    "plan_support": (
        "If something breaks on {plan}, who helps me and how?",
        "What help desk access does the {plan} tier offer?",
        "Assistance available on the {plan} tier?",
    ),
    "plan_response_time": (
        "If I open a ticket on {plan}, when should I expect a reply?",
        "What's the first-answer target of the {plan} tier?",
        "Ticket turnaround on the {plan} tier?",
    ),
    "plan_backup_retention": (
        "If I'm on {plan}, how far back can I restore a snapshot?",
        "What's the snapshot lifetime of the {plan} tier?",
        "Restore window for the {plan} tier?",
    ),
    "plan_max_file": (
        "If I'm on {plan}, what's the heaviest file I can send up?",
        "What's the per-file ceiling of the {plan} tier?",
        "Biggest single upload allowed on the {plan} tier?",
    ),
    "plan_sla": (
        "If I'm on {plan}, how much downtime is contractually allowed?",
        "What's the availability commitment of the {plan} tier?",
        "Reliability promise for the {plan} tier?",
    ),
    "plan_projects": (
        "If I'm on {plan}, how many separate projects can I run?",
        "What's the project cap of the {plan} tier?",
        "Projects permitted on the {plan} tier?",
    ),
    "plan_bandwidth": (
        "If I'm on {plan}, how much can my users download each month?",
        "What's the egress allowance of the {plan} tier?",
        "Monthly transfer quota on the {plan} tier?",
    ),
    "region_location": (
        "In what city do servers for {region} physically sit?",
        "Which metro area hosts the {region} zone?",
        "Home city of the {region} zone?",
    ),
    "region_storage_price": (
        "If I add more space in {region}, what's the rate?",
        "What's the per-gigabyte charge of the {region} zone?",
        "Storage rate for the {region} zone?",
    ),
    "region_compliance": (
        "If I store regulated data in {region}, which standards are covered?",
        "What audits has the {region} zone passed?",
        "Regulatory attestations of the {region} zone?",
    ),
    "region_min_plan": (
        "If I want my workspace in {region}, what subscription is required?",
        "What's the entry tier for the {region} zone?",
        "Cheapest tier that can deploy to the {region} zone?",
    ),
    "addon_price": (
        "If I bolt on {addon}, how much more will I pay?",
        "What's the surcharge for the {addon} extra?",
        "Fee for the {addon} extra?",
    ),
    "addon_min_plan": (
        "If I want the {addon} extra, what subscription must I have?",
        "What's the entry tier for purchasing the {addon} extra?",
        "Lowest tier eligible for the {addon} extra?",
    ),
    "feature_min_plan": (
        "If my company needs {feature}, which subscription should we buy?",
        "What's the entry tier that ships with {feature}?",
        "Lowest tier offering {feature}?",
    ),
    "integration_min_plan": (
        "If I hook up {integration}, which subscription is required?",
        "What's the entry tier for linking {integration}?",
        "Lowest tier that supports a {integration} connection?",
    ),
    "policy": (
        "Do you happen to know {topic} offhand?",
        "I'm curious about {topic}; what does the policy say?",
        "Could you clarify {topic} for me?",
    ),
    "procedure": (
        "Walk me through what it takes to {task}.",
        "What's the procedure if I want to {task}?",
        "Could you guide me so I can {task}?",
    ),
    "error_code": (
        "The app just showed {code}; what's going on?",
        "What's behind the {code} message I keep hitting?",
        "Meaning of the {code} failure?",
    ),
}


def templates(intent: str, split: Split) -> tuple[str, ...]:
    """Return the templates of one intent and split.

    Raises:
        ValueError: unknown intent or split (the message lists the valid ones).

    """
    table = {"train": TRAIN_TEMPLATES, "heldout": HELDOUT_TEMPLATES}.get(split)
    if table is None:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    if intent not in table:
        raise ValueError(f"unknown intent {intent!r}; valid intents: {sorted(table)}")
    return table[intent]


def template_slots(template: str) -> list[str]:
    """Slot names a template uses, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render(template: str, slots: dict[str, str]) -> str:
    """Fill a template's slots.

    Raises:
        KeyError: a slot the template needs is missing from ``slots``.

    """
    return template.format(**slots)


def questions(fact: Fact, split: Split) -> list[str]:
    """Every question for ``fact`` rendered with the templates of ``split``."""
    return [render(t, fact.slots) for t in templates(fact.intent, split)]
