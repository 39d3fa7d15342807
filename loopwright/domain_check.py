"""``loopwright domain check``: validate a domain folder, every problem with its place.

Each problem names the file, the line or field, and what is valid. The shallow check
(``deep=False``, run whenever the loop loads the domain) reads ``domain.yaml``, checks that
the files it names exist and that its hooks import; the deep check also reads every data
file, suite and sample, loads the policies and renders the chat template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from loopwright.domain_folder import SPEC_FILE, DomainSpec, import_hook

if TYPE_CHECKING:
    from loopwright.evaluation.scorers import ScorerResources

# A conversation every chat template must render, with each content visible in the output.
_PROBE_CHAT = [
    {"role": "system", "content": "SYSTEM-PROBE"},
    {"role": "user", "content": "USER-PROBE"},
    {"role": "assistant", "content": "ASSISTANT-PROBE"},
]


@dataclass
class DomainReport:
    """What a check found.

    Attributes:
        spec: the parsed ``domain.yaml`` (None when it does not parse).
        problems: one line each, ``file:line: field: message``.
        checked: what was looked at and found valid, one line each.
        warnings: what is valid but cannot work as meant yet (e.g. fewer samples than the
            gate needs), one line each.
    """

    spec: DomainSpec | None = None
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_domain_folder(folder: str | Path, *, deep: bool = True) -> DomainReport:
    """Check a domain folder; never raises for a problem of the folder."""
    folder = Path(folder)
    report = DomainReport()
    spec_path = folder / SPEC_FILE
    if not folder.is_dir():
        report.problems.append(
            f"{folder}: not a folder (a domain is a folder with {SPEC_FILE}, "
            "or package.module:attribute)"
        )
        return report
    if not spec_path.is_file():
        report.problems.append(
            f"{spec_path}: missing; `loopwright domain init {folder}` writes a commented one"
        )
        return report
    report.spec = _parse_spec(spec_path, report)
    if report.spec is None:
        return report
    _check_named_files(folder, report.spec, spec_path, report)
    _check_hooks(report.spec, spec_path, report)
    if deep:
        _check_knowledge(folder, report.spec, report)
        _check_policies(folder, report.spec, report)
        _check_recipe(folder, report.spec, report)
        _check_chat_template(folder, report.spec, report)
        _check_data_files(folder, report.spec, report)
        _check_suites(folder, report.spec, report)
    return report


def _parse_spec(path: Path, report: DomainReport) -> DomainSpec | None:
    from loopwright.evaluation.suites import SuiteError, line_of, parse_yaml_with_lines

    try:
        data, node = parse_yaml_with_lines(path)
    except SuiteError as exc:
        report.problems.append(str(exc))
        return None
    if not isinstance(data, dict):
        report.problems.append(f"{path}:1: must be a mapping of keys")
        return None
    try:
        return DomainSpec.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = err["loc"]
            where = ".".join(str(p) for p in loc) or "<root>"
            valid = ""
            if err["type"] == "extra_forbidden":
                valid = f"; valid keys: {sorted(_model_at(loc[:-1]).model_fields)}"
            report.problems.append(f"{path}:{line_of(node, loc)}: {where}: {err['msg']}{valid}")
        return None


def _model_at(loc: tuple[Any, ...]) -> Any:
    """The pydantic model class at a field path of :class:`DomainSpec`."""
    model: Any = DomainSpec
    for part in loc:
        annotation = model.model_fields[part].annotation
        model = next(
            (
                a
                for a in getattr(annotation, "__args__", (annotation,))
                if hasattr(a, "model_fields")
            ),
            annotation,
        )
    return model


def _check_named_files(
    folder: Path, spec: DomainSpec, spec_path: Path, report: DomainReport
) -> None:
    named = {
        "knowledge_base": spec.knowledge_base,
        "knowledge_previous": spec.knowledge_previous,
        "gate_policy": spec.gate_policy,
        "canary_policy": spec.canary_policy,
        "chat_template": spec.chat_template,
        "nightly.finetune_recipe": spec.nightly.finetune_recipe if spec.nightly else None,
    }
    for key, relative in named.items():
        if relative is not None and not (folder / relative).is_file():
            report.problems.append(f"{spec_path}: {key}: file {folder / relative} does not exist")
    if not (folder / spec.suites).is_dir():
        report.problems.append(
            f"{spec_path}: suites: folder {folder / spec.suites} does not exist "
            "(evaluation suites: YAML files, see `loopwright domain init`)"
        )


def _check_hooks(spec: DomainSpec, spec_path: Path, report: DomainReport) -> None:
    for key, hook in spec.hooks.model_dump().items():
        if hook is None:
            continue
        try:
            import_hook(hook)
        except ValueError as exc:
            report.problems.append(f"{spec_path}: hooks.{key}: {exc}")
        else:
            report.checked.append(f"hook {key}: {hook}")


def _check_knowledge(folder: Path, spec: DomainSpec, report: DomainReport) -> None:
    import json

    from loopwright.grounding import load_facts_jsonl

    for relative in filter(None, (spec.knowledge_base, spec.knowledge_previous)):
        path = folder / relative
        if not path.is_file():
            continue  # reported with domain.yaml
        try:
            facts = load_facts_jsonl(path)
        except ValueError as exc:
            report.problems.append(str(exc))
            continue
        ids = [f.id for f in facts]
        if len(set(ids)) != len(ids):
            report.problems.append(f"{path}: fact ids must be unique")
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        for lineno, data in enumerate(lines, 1):
            value = data.get("value")
            if value is not None and str(value) not in str(data["text"]):
                report.problems.append(
                    f"{path}:{lineno}: value {value!r} must appear in the fact's text "
                    "(the fact checker finds the stated value there)"
                )
        report.checked.append(f"{relative}: {len(facts)} facts")


def _check_policies(folder: Path, spec: DomainSpec, report: DomainReport) -> None:
    from loopwright.release.canary import load_canary_policy
    from loopwright.release.gate_policy import load_gate_policy
    from loopwright.release.strict import ConfigError

    loaders = {"gate_policy": load_gate_policy, "canary_policy": load_canary_policy}
    for key, loader in loaders.items():
        relative = getattr(spec, key)
        if relative is None or not (folder / relative).is_file():
            continue
        try:
            loader(folder / relative)
        except ConfigError as exc:
            report.problems.append(str(exc))
        else:
            report.checked.append(f"{key}: {relative}")


def _check_recipe(folder: Path, spec: DomainSpec, report: DomainReport) -> None:
    from loopwright.recipes import load_recipe
    from loopwright.release.strict import ConfigError

    relative = spec.nightly.finetune_recipe if spec.nightly else None
    if relative is None or not (folder / relative).is_file():
        return  # none, or reported with domain.yaml
    try:
        recipe, _ = load_recipe(folder / relative)
    except ConfigError as exc:
        report.problems.append(str(exc))
    else:
        report.checked.append(f"finetune recipe: {relative} (method {recipe.method})")


def _check_chat_template(folder: Path, spec: DomainSpec, report: DomainReport) -> None:
    path = folder / spec.chat_template if spec.chat_template else None
    if path is None or not path.is_file():
        return
    problem = chat_template_problem(path.read_text(encoding="utf-8"))
    if problem:
        report.problems.append(f"{path}: {problem}")
    else:
        report.checked.append(f"chat_template: {spec.chat_template} renders")


def chat_template_problem(template: str) -> str | None:
    """Why a chat template cannot serve the loop, or None when it renders a conversation.

    Rendered as transformers renders it; every message's content and a generation prompt
    must come out.
    """
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        # Annotated as str; it returns (rendered chats, generation indices).
        rendered, _ = render_jinja_template(  # type: ignore[str-unpack]
            conversations=[_PROBE_CHAT], chat_template=template, add_generation_prompt=True
        )
    except Exception as exc:  # noqa: BLE001 - any Jinja failure is the template's fault
        return f"chat template does not render: {type(exc).__name__}: {exc}"
    text = rendered[0]
    missing = [m["role"] for m in _PROBE_CHAT if m["content"] not in text]
    if missing:
        return f"chat template drops the content of {missing} messages"
    return None


def _check_data_files(folder: Path, spec: DomainSpec, report: DomainReport) -> None:
    from loopwright.nightly import NightlyConfig
    from loopwright.records import PreferencePair, RecordError, read_conversations, read_jsonl

    defaults = spec.nightly or NightlyConfig()  # the file names the domain's recipe uses
    path = folder / defaults.replay_file
    if path.is_file():
        try:
            report.checked.append(f"{defaults.replay_file}: {len(read_conversations(path))} rows")
        except (RecordError, ValueError) as exc:
            report.problems.append(str(exc))
    for relative in (defaults.reward_replay_file, defaults.reward_heldout_file):
        path = folder / relative
        if path.is_file():
            try:
                report.checked.append(
                    f"{relative}: {sum(1 for _ in read_jsonl(path, PreferencePair))} pairs"
                )
            except (RecordError, ValueError) as exc:
                report.problems.append(str(exc))


def _check_suites(folder: Path, spec: DomainSpec, report: DomainReport) -> None:
    from loopwright.evaluation.suites import SuiteError, discover_suites, load_samples, load_suite

    suite_dir = folder / spec.suites
    if not suite_dir.is_dir():
        return
    files = sorted([*suite_dir.glob("*.yaml"), *suite_dir.glob("*.yml")])
    if not files:
        report.problems.append(
            f"{suite_dir}: no suite files (*.yaml); the gate has nothing to judge"
        )
    resources = _placeholder_resources()
    valid = True
    per_dimension: dict[str, int] = {}
    for path in files:  # one by one, so one bad suite does not hide the others' problems
        try:
            suite = load_suite(path, data_root=folder, resources=resources)
            samples = load_samples(suite)
        except SuiteError as exc:
            report.problems.append(str(exc))
            valid = False
        else:
            report.checked.append(f"suite {suite.name} ({suite.dimension}): {len(samples)} samples")
            per_dimension[suite.dimension] = per_dimension.get(suite.dimension, 0) + len(samples)
    if valid and files:
        try:  # what only the folder as a whole can get wrong: names and metrics used twice
            discover_suites(suite_dir, data_root=folder, resources=resources)
        except SuiteError as exc:
            report.problems.append(str(exc))
    if valid:
        _check_gate_coverage(folder, spec, per_dimension, report)


def _check_gate_coverage(
    folder: Path, spec: DomainSpec, per_dimension: dict[str, int], report: DomainReport
) -> None:
    """Warn where the gate policy cannot judge: no suite for a key, fewer samples than min_n."""
    from loopwright.release.gate_policy import default_policy_path, load_gate_policy
    from loopwright.release.strict import ConfigError

    path = folder / spec.gate_policy if spec.gate_policy else default_policy_path()
    try:
        policy = load_gate_policy(path)
    except ConfigError:
        return  # reported by _check_policies
    for key, rule in policy.dimensions.items():
        dimension = key.split("/", 1)[0]
        needed = rule.min_n or policy.min_n
        have = per_dimension.get(dimension)
        if have is None and rule.required and "/" not in key:
            report.warnings.append(
                f"{path}: dimensions.{key}: no suite measures {dimension!r}; the gate "
                "cannot pass a candidate until one does (or the key says required: false)"
            )
        elif have is not None and have < needed and "/" not in key:
            report.warnings.append(
                f"{path}: dimensions.{key}: the suites hold {have} {dimension} samples; the "
                f"gate judges at least {needed} (min_n) per view, so add samples"
            )


def _placeholder_resources() -> ScorerResources:
    """Stand-ins so model-based scorers' options are validated without loading models."""
    from loopwright.evaluation.scorers import ScorerResources

    class _Unused:
        def scores(self, texts: list[str]) -> list[float]:
            raise AssertionError("domain check never scores")

        def score(self, prompts: list[str], responses: list[str]) -> list[float]:
            raise AssertionError("domain check never scores")

    return ScorerResources(reward=_Unused(), guard=_Unused())
