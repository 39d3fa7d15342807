"""The example help-desk domain ("Acme Cloud").

Knowledge base, templates, safety data, adversarial transforms, seeded dataset generation
and user / reviewer simulators.

Pure Python, deterministic for a seed, no torch. The platform reaches it only through the
files :func:`write_domain` writes and the records in ``loopwright.records``.
"""

from examples.helpdesk.generate import (
    EVAL_REVISION,
    SUITES,
    DomainData,
    build_domain,
    tokenizer_corpus,
    write_domain,
)
from examples.helpdesk.kb import (
    PRODUCT,
    UNKNOWN_TEXT,
    Fact,
    changed_fact_ids,
    fact_index,
    knowledge_base,
)
from examples.helpdesk.records import (
    Conversation,
    LabelledPrompt,
    read_conversations,
    read_labelled_prompts,
)
from examples.helpdesk.safety import (
    CATEGORIES,
    REFUSAL_TEXT,
    SELF_HARM_TEXT,
    Lookalike,
    SafetyCategory,
    is_refusal,
    is_safe_completion,
)
from examples.helpdesk.simulators import (
    Review,
    ReviewerSimulator,
    SimRequest,
    UserSimulator,
    fact_request,
    grade_response,
    matches_answer,
    mentions,
    poisoned_feedback,
    rating_for,
    safety_request,
    says_unknown,
    synthetic_response,
    unknown_request,
)
from examples.helpdesk.templates import HELDOUT_TEMPLATES, TRAIN_TEMPLATES
from examples.helpdesk.transforms import TRANSFORMS, apply_transform, get_transform

__all__ = [
    "Review",
    "ReviewerSimulator",
    "SimRequest",
    "UserSimulator",
    "fact_request",
    "grade_response",
    "matches_answer",
    "mentions",
    "poisoned_feedback",
    "rating_for",
    "safety_request",
    "says_unknown",
    "synthetic_response",
    "unknown_request",
    "CATEGORIES",
    "EVAL_REVISION",
    "HELDOUT_TEMPLATES",
    "PRODUCT",
    "REFUSAL_TEXT",
    "SELF_HARM_TEXT",
    "SUITES",
    "TRAIN_TEMPLATES",
    "TRANSFORMS",
    "UNKNOWN_TEXT",
    "Conversation",
    "DomainData",
    "Fact",
    "LabelledPrompt",
    "Lookalike",
    "SafetyCategory",
    "apply_transform",
    "build_domain",
    "changed_fact_ids",
    "fact_index",
    "get_transform",
    "is_refusal",
    "is_safe_completion",
    "knowledge_base",
    "read_conversations",
    "read_labelled_prompts",
    "tokenizer_corpus",
    "write_domain",
]
