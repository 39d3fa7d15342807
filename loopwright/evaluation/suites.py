"""Declarative evaluation suites: a YAML file per suite over a JSONL file of EvalSamples.

A suite file says what to measure, not how::

    name: correctness
    dimension: correctness          # one of loopwright.records.DIMENSIONS
    samples: eval/correctness.jsonl # relative to the data root
    primary: exact_match            # the metric a gate looks at first (default: first)
    slices: [split, changed_in_rev2]  # sample tag keys to break metrics down by
    decoding: {max_new_tokens: 48}  # optional overrides of the run's decoding params
    repeats: 1                      # > 1 samples each prompt several times (temperature > 0)
    allow_empty: false              # true: a missing/empty sample file means zero samples
    scorers:
      - scorer: exact_match         # a registered scorer (see scorers.list_scorers())
        name: exact_match           # metric name (default: the scorer name)
        options: {mode: exact}
        direction: higher           # optional override of the scorer's direction

Every problem is reported with the file and line it comes from: malformed YAML, unknown
keys, an unknown dimension or scorer, bad options, and in the sample file a bad record,
a sample of another dimension, a duplicated id, or a missing reference.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from loopwright.evaluation.scorers import (
    BuiltScorer,
    ScorerError,
    ScorerResources,
    build_scorer,
    get_scorer_info,
)
from loopwright.records import DIMENSIONS, EvalSample, RecordError, jsonl_objects, parse_record
from models.generation import DecodingParams

logger = logging.getLogger(__name__)


class SuiteError(ValueError):
    """A suite or its samples are invalid; the message starts with ``file:line``."""


class ScorerEntry(BaseModel):
    """One scorer line of a suite file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scorer: str
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    direction: Literal["higher", "lower"] | None = None


class DecodingOverrides(BaseModel):
    """Per-suite overrides of the run's decoding parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None

    def apply(self, base: DecodingParams) -> DecodingParams:
        """Return the base parameters with these overrides applied."""
        return replace(base, **{k: v for k, v in self.model_dump().items() if v is not None})


class SuiteSpec(BaseModel):
    """The validated content of a suite file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    dimension: str
    description: str = ""
    samples: str
    primary: str | None = None
    slices: list[str] = Field(default_factory=list)
    decoding: DecodingOverrides = Field(default_factory=DecodingOverrides)
    repeats: int = Field(default=1, ge=1, le=100)
    allow_empty: bool = False
    scorers: list[ScorerEntry] = Field(min_length=1)

    @field_validator("dimension")
    @classmethod
    def _known_dimension(cls, value: str) -> str:
        if value not in DIMENSIONS:
            raise ValueError(f"unknown dimension {value!r}; valid dimensions: {list(DIMENSIONS)}")
        return value


@dataclass(frozen=True)
class Suite:
    """A loaded suite: its spec, configured scorers and where it came from.

    Attributes:
        spec: validated YAML content.
        path: the suite file.
        scorers: configured scorers in file order (group scorers run last).
        sample_path: the resolved JSONL file of samples.

    """

    spec: SuiteSpec
    path: Path
    scorers: tuple[BuiltScorer, ...]
    sample_path: Path

    @property
    def name(self) -> str:
        """The suite's name."""
        return self.spec.name

    @property
    def dimension(self) -> str:
        """The dimension the suite measures."""
        return self.spec.dimension

    @property
    def primary(self) -> str:
        """The primary metric's name."""
        return self.spec.primary or self.scorers[0].metric

    def decoding(self, base: DecodingParams) -> DecodingParams:
        """Return the decoding parameters this suite runs with, given the run's defaults."""
        return self.spec.decoding.apply(base)


# --------------------------------------------------------------------------- YAML with lines


def line_of(node: yaml.Node | None, loc: Sequence[Any]) -> int:
    """1-based line of the YAML node at path ``loc`` (the closest existing ancestor)."""
    if node is None:
        return 1
    line = node.start_mark.line + 1
    for part in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    # Point at the key for unknown-key errors, at the value otherwise.
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            return line
        node = child
        line = node.start_mark.line + 1
    return line


def parse_yaml_with_lines(path: Path) -> tuple[Any, yaml.Node | None]:
    """``(data, node)`` of a YAML file; the node gives lines to :func:`line_of`.

    Raises:
        SuiteError: malformed YAML, with ``file:line``.
    """
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        cmark = getattr(exc, "context_mark", None)
        if context and cmark is not None:
            problem += f" ({context} at line {cmark.line + 1})"
        raise SuiteError(f"{path}:{line}: malformed YAML: {problem}") from exc
    return data, node


def load_suite(
    path: str | Path,
    *,
    data_root: str | Path,
    resources: ScorerResources | None = None,
) -> Suite:
    """Parse and validate one suite file and configure its scorers.

    Args:
        path: the YAML file.
        data_root: folder the ``samples`` path is relative to.
        resources: models for model-based scorers (required only if the suite uses them).

    Raises:
        SuiteError: with ``file:line`` for any problem in the file.

    """
    path = Path(path)
    data, node = parse_yaml_with_lines(path)
    if not isinstance(data, dict):
        raise SuiteError(f"{path}:1: a suite file must be a mapping of keys, got {type(data)}")
    try:
        spec = SuiteSpec.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = err["loc"]
        where = ".".join(str(p) for p in loc) or "<root>"
        valid = ""
        if err["type"] == "extra_forbidden":
            model = ScorerEntry if "scorers" in loc else SuiteSpec
            if "decoding" in loc:
                model = DecodingOverrides  # type: ignore[assignment]
            valid = f"; valid keys: {sorted(model.model_fields)}"
        raise SuiteError(f"{path}:{line_of(node, loc)}: {where}: {err['msg']}{valid}") from exc

    built: list[BuiltScorer] = []
    seen: set[str] = set()
    for i, entry in enumerate(spec.scorers):
        line = line_of(node, ("scorers", i))
        try:
            scorer = build_scorer(
                entry.scorer,
                entry.options,
                metric=entry.name,
                direction=entry.direction,
                resources=resources,
            )
        except (ScorerError, ValueError) as exc:
            raise SuiteError(f"{path}:{line}: {exc}") from exc
        if scorer.metric in seen:
            raise SuiteError(f"{path}:{line}: metric name {scorer.metric!r} used twice")
        base = scorer.options.get("base") if scorer.info.kind == "group" else None
        if base is not None and base not in seen:
            raise SuiteError(
                f"{path}:{line}: {entry.scorer}: base {base!r} must be "
                f"an earlier metric of this suite; earlier metrics: {sorted(seen)}"
            )
        seen.add(scorer.metric)
        built.append(scorer)
    if spec.primary is not None and spec.primary not in seen:
        raise SuiteError(
            f"{path}:{line_of(node, ('primary',))}: primary {spec.primary!r} is not a metric "
            f"of this suite; metrics: {sorted(seen)}"
        )
    if spec.repeats > 1 and (spec.decoding.temperature or 0.0) <= 0.0:
        raise SuiteError(
            f"{path}:{line_of(node, ('repeats',))}: repeats={spec.repeats} with greedy "
            "decoding gives identical repeats; set decoding.temperature > 0"
        )
    sample_path = Path(data_root) / spec.samples
    return Suite(spec=spec, path=path, scorers=tuple(built), sample_path=sample_path)


def load_samples(suite: Suite) -> list[EvalSample]:
    """Read and check the suite's samples.

    Checks, each failing with ``file:line``: valid JSON and EvalSample record, the
    suite's dimension, unique ids, and at least one reference on samples expected to be
    answered when the suite has a reference-based scorer.

    Raises:
        SuiteError: any problem; a missing or empty file unless ``allow_empty``.

    """
    path = suite.sample_path
    if not path.exists():
        if suite.spec.allow_empty:
            logger.info("suite %s: %s does not exist; zero samples (allow_empty)", suite.name, path)
            return []
        raise SuiteError(f"{suite.path}: samples file {path} does not exist")
    needs_refs = [s.metric for s in suite.scorers if s.info.requires_references]
    samples: list[EvalSample] = []
    first_line: dict[str, int] = {}
    try:
        lines = list(jsonl_objects(path))
    except RecordError as exc:
        raise SuiteError(str(exc)) from exc
    for lineno, where, data in lines:
        try:
            sample = parse_record(EvalSample, data, where)
        except RecordError as exc:
            raise SuiteError(str(exc)) from exc
        if sample.dimension != suite.dimension:
            raise SuiteError(
                f"{where}: sample {sample.id!r} has dimension {sample.dimension!r}, "
                f"suite {suite.name!r} ({suite.path}) measures {suite.dimension!r}"
            )
        if sample.id in first_line:
            raise SuiteError(
                f"{where}: duplicate sample id {sample.id!r} (first at line "
                f"{first_line[sample.id]})"
            )
        if needs_refs and sample.expected_behaviour == "answer" and not sample.references:
            raise SuiteError(
                f"{where}: sample {sample.id!r} has no references but suite "
                f"{suite.name!r} scores it with reference-based {needs_refs}"
            )
        first_line[sample.id] = lineno
        samples.append(sample)
    if not samples and not suite.spec.allow_empty:
        raise SuiteError(f"{path}: no samples (set allow_empty: true in {suite.path} to allow)")
    return samples


def discover_suites(
    suite_dir: str | Path,
    names: Sequence[str] | Literal["all"] = "all",
    *,
    data_root: str | Path,
    resources: ScorerResources | None = None,
) -> list[Suite]:
    """Load the suites of a folder (``*.yaml``/``*.yml``), all or by name.

    Raises:
        SuiteError: a bad file, two files with one suite name, an unknown requested name
            (the message lists the valid names), or one metric name used by two suites of
            the same dimension (reports would be ambiguous).

    """
    suite_dir = Path(suite_dir)
    files = sorted([*suite_dir.glob("*.yaml"), *suite_dir.glob("*.yml")])
    if not files:
        raise SuiteError(f"{suite_dir}: no suite files (*.yaml)")
    # Parse names first so a request for one suite does not fail on another's resources.
    by_name: dict[str, Path] = {}
    for f in files:
        data, node = parse_yaml_with_lines(f)
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str):
            raise SuiteError(f"{f}:1: suite file has no name")
        if name in by_name:
            raise SuiteError(
                f"{f}:{line_of(node, ('name',))}: suite name {name!r} also used by {by_name[name]}"
            )
        by_name[name] = f
    wanted = sorted(by_name) if names == "all" else list(names)
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise SuiteError(
            f"unknown suite(s) {unknown}; valid suites in {suite_dir}: {sorted(by_name)}"
        )
    suites = [load_suite(by_name[n], data_root=data_root, resources=resources) for n in wanted]
    owner: dict[tuple[str, str], Suite] = {}
    for suite in suites:
        for scorer in suite.scorers:
            key = (suite.dimension, scorer.metric)
            if key in owner:
                raise SuiteError(
                    f"{suite.path}: metric {scorer.metric!r} of dimension {suite.dimension!r} "
                    f"is also defined by {owner[key].path}; give one a distinct name"
                )
            owner[key] = suite
    return suites


def needed_resources(suite_dir: str | Path) -> dict[str, list[str]]:
    """Which resources (reward, guard) each suite of a folder needs, without building it."""
    out: dict[str, list[str]] = {}
    for f in sorted([*Path(suite_dir).glob("*.yaml"), *Path(suite_dir).glob("*.yml")]):
        data, _ = parse_yaml_with_lines(f)
        if not isinstance(data, Mapping):
            continue
        needs: set[str] = set()
        for entry in data.get("scorers") or []:
            if isinstance(entry, Mapping) and isinstance(entry.get("scorer"), str):
                try:
                    needs.update(get_scorer_info(entry["scorer"]).needs)
                except ScorerError:
                    continue
        out[str(data.get("name", f.stem))] = sorted(needs)
    return out


def sample_share(samples: Sequence[EvalSample], fraction: float) -> list[EvalSample]:
    """The first ``fraction`` of a suite's samples in a fixed pseudo-random order.

    Whole families (samples sharing a ``group``; a sample without one is its own family)
    are kept together, so group scorers still see complete families. The order is a hash
    of the family name: the same fraction always gives the same samples, a larger fraction
    a superset (a staged evaluation only adds samples), and the selection does not follow
    the file's order (which is sorted by category or split in most generators).

    Args:
        samples: the suite's samples.
        fraction: share of the families to keep, in (0, 1]; 1 keeps everything.

    Raises:
        ValueError: ``fraction`` outside (0, 1].
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"sample fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return list(samples)
    families = list(dict.fromkeys(s.group or s.id for s in samples))
    ranked = sorted(families, key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    kept = set(ranked[: max(1, math.ceil(fraction * len(ranked)))])
    return [s for s in samples if (s.group or s.id) in kept]
