"""Run expectation suites through one ephemeral Great Expectations context and shape the result.

GX is the engine that evaluates and reports; this module only (1) keeps one ephemeral context per
process (creating it and importing GX costs seconds, validating a 100k-row frame a fraction of that),
and (2) turns GX's validation results into a small `ContractResult`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

MAX_EXAMPLES = 5  # examples kept per failed expectation
_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLES}

_LOCK = threading.Lock()
_BATCH_DEFINITION = None  # the whole-dataframe batch definition of the process-wide ephemeral context


@dataclass
class FrameCheck:
    """One expectation suite applied to one (possibly derived) frame."""

    frame_name: str  # e.g. "splits.per_user"; failures name it
    frame: pd.DataFrame
    suite: Any  # great_expectations.ExpectationSuite


@dataclass
class ContractResult:
    """Outcome of one contract: `success`, each failed expectation with counts and examples."""

    suite: str
    success: bool
    failures: list[dict] = field(default_factory=list)
    statistics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"suite": self.suite, "success": self.success, "failures": self.failures, "statistics": self.statistics}

    def summary(self) -> str:
        s = self.statistics
        head = (
            f"contract '{self.suite}': {'passed' if self.success else 'FAILED'} "
            f"({s.get('unsuccessful_expectations', 0)} of {s.get('evaluated_expectations', 0)} expectations failed; "
            f"rows checked: {', '.join(f'{k}={v}' for k, v in s.get('rows', {}).items())})"
        )
        lines = [head]
        for f in self.failures:
            args = ", ".join(f"{k}={_short(v)}" for k, v in f["kwargs"].items())
            rule = f" [{f['rule']}]" if f.get("rule") else ""
            if f["exception"]:
                detail = f"raised: {f['exception']}"
            elif f["unexpected_count"] is not None:
                detail = f"{f['unexpected_count']} unexpected of {f['element_count']}"
                if f["examples"]:
                    detail += f"; examples: {json.dumps(f['examples'], default=str)}"
            else:
                detail = f"observed {json.dumps(f['observed_value'], default=str)}"
                if f["details"]:
                    detail += f" ({json.dumps(f['details'], default=str)})"
            lines.append(f"  - {f['frame']}: {f['expectation']}({args}){rule}: {detail}")
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 4:
        return f"[{', '.join(map(str, value[:3]))}, … {len(value)} values]"
    return str(value)


class ContractViolation(ValueError):
    """A data contract failed; the message is the result's readable summary.

    A ValueError: bad data is bad input, so CLIs that report ValueError cleanly (exit 2) report this too.
    """

    def __init__(self, result: ContractResult):
        super().__init__(result.summary())
        self.result = result


def require(result: ContractResult) -> ContractResult:
    """Raise `ContractViolation` (with the readable summary) unless the contract passed."""
    if not result.success:
        raise ContractViolation(result)
    return result


def ensure_context():
    """The process-wide ephemeral GX context's dataframe batch definition, created on first use."""
    global _BATCH_DEFINITION
    with _LOCK:
        if _BATCH_DEFINITION is None:
            import great_expectations as gx
            from great_expectations.data_context.types.base import (
                DataContextConfig,
                InMemoryStoreBackendDefaults,
                ProgressBarsConfig,
            )

            config = DataContextConfig(
                store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),  # no docs dir in /tmp
                analytics_enabled=False,
                progress_bars=ProgressBarsConfig(globally=False),
            )
            context = gx.get_context(mode="ephemeral", project_config=config)
            asset = context.data_sources.add_pandas("slmrec_contracts").add_dataframe_asset("frame")
            _BATCH_DEFINITION = asset.add_batch_definition_whole_dataframe("whole")
        return _BATCH_DEFINITION


def run_checks(suite_name: str, checks: list[FrameCheck]) -> ContractResult:
    """Validate every frame with its suite; collect failures in suite order."""
    started = time.perf_counter()
    batch_definition = ensure_context()
    failures: list[dict] = []
    evaluated = successful = 0
    rows = {}
    for check in checks:
        rows[check.frame_name] = len(check.frame)
        with _LOCK:  # one validation at a time through the shared context
            batch = batch_definition.get_batch(batch_parameters={"dataframe": check.frame})
            result = batch.validate(check.suite, result_format=_RESULT_FORMAT).to_json_dict()
        evaluated += result["statistics"]["evaluated_expectations"]
        successful += result["statistics"]["successful_expectations"]
        order = {_key(e.configuration.to_json_dict()): i for i, e in enumerate(check.suite.expectations)}
        failed = [r for r in result["results"] if not r["success"]]
        failed.sort(key=lambda r: order.get(_key(r["expectation_config"]), len(order)))
        failures.extend(_failure(check.frame_name, r) for r in failed)
    statistics = {
        "evaluated_expectations": evaluated,
        "successful_expectations": successful,
        "unsuccessful_expectations": evaluated - successful,
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return ContractResult(suite=suite_name, success=not failures, failures=failures, statistics=statistics)


def _kwargs(config: dict) -> dict:
    return {k: v for k, v in config.get("kwargs", {}).items() if k != "batch_id"}


def _key(config: dict) -> str:
    return json.dumps([config["type"], _kwargs(config)], sort_keys=True, default=str)


def _failure(frame_name: str, r: dict) -> dict:
    config = r["expectation_config"]
    kwargs = _kwargs(config)
    res = r.get("result") or {}
    column = kwargs.get("column", kwargs.get("column_list", kwargs.get("column_set")))
    return {
        "frame": frame_name,
        "expectation": config["type"],
        "column": column,
        "kwargs": kwargs,
        "rule": (config.get("meta") or {}).get("rule"),
        "unexpected_count": res.get("unexpected_count"),
        "element_count": res.get("element_count"),
        "unexpected_percent": res.get("unexpected_percent"),
        "observed_value": res.get("observed_value"),
        "details": res.get("details"),  # e.g. {"mismatched": {"missing": [...]}} for column sets
        "examples": _examples(res),
        "exception": _exception(r.get("exception_info")),
    }


def _examples(res: dict) -> list:
    """Up to MAX_EXAMPLES unexpected values, joined with their row (or index, e.g. user_idx)."""
    values = res.get("partial_unexpected_list") or []
    index = res.get("partial_unexpected_index_list") or []
    examples = []
    for i, value in enumerate(values[:MAX_EXAMPLES]):
        where = index[i] if i < len(index) else None
        if isinstance(where, dict):  # named index: GX gives {index_name: ..., column: value}
            examples.append(where)
        elif isinstance(value, dict):  # compound columns: value is {column: value}
            examples.append({"row": where, **value})
        else:
            examples.append({"row": where, "value": value})
    return examples


def _exception(info: Any) -> str | None:
    """GX reports an expectation that could not be computed (e.g. a missing column) as exception info."""
    if not info:
        return None
    if "raised_exception" in info:
        return info["exception_message"] if info["raised_exception"] else None
    messages = sorted({v["exception_message"] for v in info.values() if isinstance(v, dict) and v.get("raised_exception")})
    return "; ".join(messages) or None
