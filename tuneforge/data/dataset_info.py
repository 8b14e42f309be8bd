"""LLaMA-Factory's `dataset_info.json` as a source: each described dataset read as its description means.

A source `path/dataset_info.json` reads every dataset it describes; `path/dataset_info.json#a,b` (the CLI's
`--dataset a`) reads the named ones. Each description names a local `file_name` (beside the json, a file or
a folder), a `formatting` (alpaca or sharegpt), `ranking` (preference pairs), `columns` (which record fields
hold prompt, query, response, history, messages, system, tools, images/videos/audios, chosen, rejected,
kto_tag) and, for sharegpt, `tags` (role_tag, content_tag and the role values: user_tag, assistant_tag,
observation_tag, function_tag, system_tag). Every record becomes the tuneforge layout with that meaning and is
parsed like any other record, so file:line, rejects and unused-field reports work unchanged:

  alpaca      -> {"messages": [system?, history pairs..., user: prompt + "\\n" + query, assistant: response]}
                 (LLaMA-Factory joins prompt and query with one newline; history answers are trained too)
  + ranking   -> {"messages": prompt messages, "chosen": str, "rejected": str}       (objective dpo)
  + kto_tag   -> {"messages": [...], "kto_tag": bool}                                 (objective kto)
  columns: {prompt} only -> {"text": prompt}                                          (pre-training, clm)
  sharegpt    -> {"conversations": [{"from", "value"}], "system"?, "tools"?} with the tags read as
                 human/gpt/system/observation/function_call (a leading system turn overrides the column, named)
  + ranking   -> {"conversations", "chosen": {"from", "value"}, "rejected": {...}}
  + kto_tag   -> {"conversations", "kto_tag": bool}

Media columns keep their name (images/videos/audios) and are refused as multimodal. Hub, script and cloud
sources (hf_hub_url, ms_hub_url, om_hub_url, script_url, cloud_file_name, load_from) are refused: tuneforge
reads local files only. Unknown description keys are errors, never ignored. Each example's metadata names its
`dataset`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.data.issues import Issue
from tuneforge.errors import DataError, Problem

INFO_NAME = "dataset_info.json"
FORMATTINGS = ("alpaca", "sharegpt")
COLUMNS = (
    "prompt",
    "query",
    "response",
    "history",
    "messages",
    "system",
    "tools",
    "images",
    "videos",
    "audios",
    "chosen",
    "rejected",
    "kto_tag",
)
TAG_DEFAULTS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
_OUR_ROLE = {  # the tag -> the ShareGPT speaker tuneforge reads
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
_HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "load_from")
_KEYS = {"file_name", "formatting", "ranking", "columns", "tags", "file_sha1", "split", *_HUB_KEYS}
_UNSUPPORTED = {  # keys whose meaning tuneforge does not reproduce: refused rather than ignored
    "subset": "a subset is a hub dataset's configuration; point file_name at the local file of that subset",
    "folder": "a folder of a hub repository; point file_name at the local folder",
    "num_samples": "tuneforge does not subsample a dataset; cut the file to the records you want",
}
_MEDIA = ("images", "videos", "audios")


@dataclass
class Description:
    """One dataset of a dataset_info.json, checked."""

    name: str
    file: Path
    formatting: str = "alpaca"
    ranking: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def pretraining(self) -> bool:
        """LLaMA-Factory's pre-training layout: only the prompt column is given (read as text)."""
        return self.formatting == "alpaca" and set(self.columns) == {"prompt"}

    def convert(self, record: Any) -> tuple[Any, list[Issue]]:
        """Their record -> ours (see the module doc), and the problems only the description can see."""
        if not isinstance(record, dict):
            return record, []  # the parser reports a non-object
        issues: list[Issue] = []
        rest = dict(record)
        out = _sharegpt(self, rest, issues) if self.formatting == "sharegpt" else _alpaca(self, rest, issues)
        for key in _MEDIA:
            if self.columns.get(key, key) in rest:
                out[key] = rest.pop(self.columns.get(key, key))
        meta = rest.pop("metadata", {})
        out["metadata"] = {**meta, "dataset": self.name} if isinstance(meta, dict) else meta
        for key, value in rest.items():  # not described: kept, and reported as unused like any other field
            out.setdefault(key, value)
        return out, issues


def match(path: str | Path) -> tuple[Path, list[str]] | None:
    """(the dataset_info.json, the selected dataset names; [] for all) when `path` is such a source."""
    text = str(path)
    base, _, names = text.partition("#")
    if Path(base).name != INFO_NAME:
        return None
    return Path(base), [n.strip() for n in names.split(",") if n.strip()]


def source(info: str | Path, names: list[str] | tuple[str, ...] = ()) -> str:
    """The source string of `names` in `info` (what `--dataset` builds)."""
    return f"{info}#{','.join(names)}" if names else str(info)


def load(info: Path, names: list[str]) -> list[Description]:
    """The selected descriptions of `info`, checked; one DataError lists every problem."""
    where = str(info)
    try:
        raw = json.loads(info.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{info} not found", [Problem(where, "no such file", "check the path")]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {info}", [Problem(where, str(exc), "write valid JSON")]) from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(
            f"{info} describes no dataset",
            [Problem(where, "the top level must be an object of dataset descriptions", '{"name": {"file_name": ...}}')],
        )
    unknown = [n for n in names if n not in raw]
    if unknown:
        raise DataError(
            f"{info}: no dataset named {', '.join(map(repr, unknown))}",
            [Problem(f"--dataset {n}", f"{info} has no {n!r}", f"use one of: {', '.join(raw)}") for n in unknown],
        )
    problems: list[Problem] = []
    out = [_description(info, name, raw[name], problems) for name in (names or list(raw))]
    if problems:
        raise DataError(f"{info}: {len(problems)} problem(s) in the dataset descriptions", problems)
    return out


def _description(info: Path, name: str, d: Any, problems: list[Problem]) -> Description:
    at = f"{info} [{name}]"

    def bad(key: str, message: str, fix: str) -> None:
        problems.append(Problem(f"{at}.{key}" if key else at, message, fix))

    desc = Description(name, info.parent)
    if not isinstance(d, dict):
        bad("", f"a description must be an object, got {type(d).__name__}", '{"file_name": "data.json", ...}')
        return desc
    for key in sorted(set(d) - _KEYS):
        fix = _UNSUPPORTED.get(key, f"use the keys LLaMA-Factory documents: {', '.join(sorted(_KEYS))}")
        bad(key, f"'{key}' is not supported", fix)
    hub = [k for k in _HUB_KEYS if d.get(k)]
    for key in hub:
        bad(key, f"'{key}' loads the data from a hub, a script or a cloud store", _NO_HUB)
    if d.get("split", "train") != "train":
        bad("split", f"split {d['split']!r} of a local file", "tuneforge reads the whole file; remove 'split'")
    file_name = d.get("file_name")
    if not hub and not (isinstance(file_name, str) and file_name):
        bad("file_name", "no file_name", "name the data file (or folder) beside dataset_info.json")
    elif isinstance(file_name, str) and not hub:
        desc.file = info.parent / file_name
        if not desc.file.exists():
            bad("file_name", f"{file_name!r} not found beside {info.name}", f"put the file at {desc.file}")
    desc.formatting = d.get("formatting", "alpaca")
    if desc.formatting not in FORMATTINGS:
        bad("formatting", f"unknown formatting {desc.formatting!r}", "use alpaca or sharegpt")
    desc.ranking = d.get("ranking", False)
    if not isinstance(desc.ranking, bool):
        bad("ranking", f"ranking must be true or false, got {desc.ranking!r}", "write true for preference data")
    desc.columns = _names(d.get("columns", {}), COLUMNS, "columns", bad)
    desc.tags = {**TAG_DEFAULTS, **_names(d.get("tags", {}), tuple(TAG_DEFAULTS), "tags", bad)}
    if d.get("tags") and desc.formatting != "sharegpt":
        bad("tags", "tags apply to the sharegpt formatting only", 'set "formatting": "sharegpt" or remove tags')
    if desc.ranking and not {"chosen", "rejected"} <= set(desc.columns):
        bad("columns", "a ranking dataset names its chosen and rejected columns", '"chosen": "chosen", ...')
    if desc.ranking and "kto_tag" in desc.columns:
        bad("columns", "kto_tag in a ranking dataset", "KTO data is unpaired: remove ranking or kto_tag")
    if (
        "messages" in desc.columns
        and desc.formatting != "sharegpt"
        or "history" in desc.columns
        and not (desc.formatting == "alpaca")
    ):
        bad("columns", "messages is a sharegpt column, history an alpaca one", "match the columns to the formatting")
    return desc


_NO_HUB = "tuneforge reads local files only: download the data beside dataset_info.json and set file_name"


def _names(value: Any, allowed: tuple[str, ...], key: str, bad) -> dict[str, str]:
    if not isinstance(value, dict):
        bad(key, f"{key} must be an object, got {type(value).__name__}", f'"{key}": {{"{allowed[0]}": "..."}}')
        return {}
    for k in sorted(set(value) - set(allowed)):
        bad(f"{key}.{k}", f"unknown {key[:-1]} {k!r}", f"use one of: {', '.join(allowed)}")
    for k, v in value.items():
        if k in allowed and not (isinstance(v, str) and v):
            bad(f"{key}.{k}", f"the {key[:-1]} {k!r} must name a field (a string), got {v!r}", "write the field name")
    return {k: v for k, v in value.items() if k in allowed and isinstance(v, str) and v}


def _alpaca(d: Description, rest: dict, issues: list[Issue]) -> dict:
    col = {"prompt": "instruction", "query": "input", "response": "output", **d.columns}
    if d.pretraining:
        return {"text": rest.pop(col["prompt"], None)}
    system, prompt, query = (rest.pop(col[k], None) if col.get(k) else None for k in ("system", "prompt", "query"))
    msgs: list[dict] = [{"role": "system", "content": system}] if system not in (None, "") else []
    history = rest.pop(col["history"], None) if col.get("history") else None
    for i, pair in enumerate(history or []):
        ok = isinstance(pair, list) and len(pair) == 2
        if not ok:
            issues.append(
                Issue(
                    "wrong_type",
                    f"a history item must be [prompt, response], got {json.dumps(pair, ensure_ascii=False)[:60]}",
                    field=f"{col['history']}[{i}]",
                    fix="write each earlier turn as a [user text, assistant text] pair",
                )
            )
            continue
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    if not isinstance(history, (list, type(None))):
        issues.append(Issue("wrong_type", "history must be a list of pairs", field=col["history"]))
    if prompt is None:
        issues.append(Issue("missing_field", f"'{col['prompt']}' is missing", field=col["prompt"], fix=_COLUMN_FIX))
    user = "\n".join(p for p in (prompt, query) if isinstance(p, str) and p) if isinstance(prompt, str) else prompt
    msgs.append({"role": "user", "content": user})
    out: dict[str, Any] = {"messages": msgs}
    if d.columns.get("tools"):
        out["tools"] = rest.pop(d.columns["tools"], None)
    if d.ranking:
        out["chosen"], out["rejected"] = (_required(rest, d.columns[k], issues) for k in ("chosen", "rejected"))
        return out
    response = _required(rest, col["response"], issues)
    msgs.append({"role": "assistant", "content": response})
    if d.columns.get("kto_tag"):
        out["kto_tag"] = _required(rest, d.columns["kto_tag"], issues)
    return out


_COLUMN_FIX = "give the field, or name the right one in the dataset's columns"


def _required(rest: dict, key: str, issues: list[Issue]) -> Any:
    if key not in rest or rest[key] is None:
        issues.append(Issue("missing_field", f"'{key}' is missing", field=key, fix=_COLUMN_FIX))
        return None
    return rest.pop(key)


def _sharegpt(d: Description, rest: dict, issues: list[Issue]) -> dict:
    col = {"messages": "conversations", **d.columns}
    turns = rest.pop(col["messages"], None) if col["messages"] in rest else None
    if turns is None:
        issues.append(Issue("missing_field", f"'{col['messages']}' is missing", field=col["messages"], fix=_COLUMN_FIX))
    converted = [_turn(d, t, f"{col['messages']}[{i}]", issues) for i, t in enumerate(turns or [])]
    if not isinstance(turns, (list, type(None))):
        issues.append(Issue("wrong_type", f"'{col['messages']}' must be a list of messages", field=col["messages"]))
        converted = []
    out: dict[str, Any] = {"conversations": converted}
    system = rest.pop(col["system"], None) if col.get("system") else None
    if converted and isinstance(converted[0], dict) and converted[0].get("from") == "system":
        if system not in (None, ""):  # LLaMA-Factory: the system turn overrides the column
            issues.append(
                Issue(
                    "system_overridden",
                    f"the leading system turn replaces the '{col['system']}' column (as LLaMA-Factory does)",
                    field=col["system"],
                    fix="keep one system prompt",
                )
            )
    elif system not in (None, ""):
        out["system"] = system
    if col.get("tools"):
        out["tools"] = rest.pop(col["tools"], None)
    if d.ranking:
        for k in ("chosen", "rejected"):
            value = _required(rest, d.columns[k], issues)
            out[k] = _turn(d, value, d.columns[k], issues) if isinstance(value, dict) else value
    elif d.columns.get("kto_tag"):
        out["kto_tag"] = _required(rest, d.columns["kto_tag"], issues)
    return out


def _turn(d: Description, turn: Any, path: str, issues: list[Issue]) -> Any:
    """One message in the description's tags -> a ShareGPT turn with tuneforge's speaker names."""
    if not isinstance(turn, dict):
        return turn  # the parser reports a non-object
    role_tag, content_tag = d.tags["role_tag"], d.tags["content_tag"]
    who = turn.get(role_tag)
    speaker = next((_OUR_ROLE[k] for k in _OUR_ROLE if d.tags[k] == who), None)
    if who is not None and speaker is None:
        tags = ", ".join(f"{d.tags[k]!r} ({k})" for k in _OUR_ROLE)
        issues.append(
            Issue(
                "unknown_role",
                f"{role_tag}={who!r} is none of the dataset's role tags",
                field=f"{path}.{role_tag}",
                fix=f"use one of {tags}, or set the tags in dataset_info.json",
            )
        )
    for key in sorted(set(turn) - {role_tag, content_tag}):
        if key in ("loss_weight", "weight"):  # a meaning we would lose: refused, not ignored
            issues.append(
                Issue(
                    "invalid_weight",
                    f"per-message '{key}' in a sharegpt dataset is not read",
                    field=f"{path}.{key}",
                    fix="write the file in the messages layout (role/content, loss_weight) and read it directly",
                )
            )
        else:
            issues.append(Issue("unknown_key", f"message key {key!r} is not used (ignored)", field=f"{path}.{key}"))
    out = {"from": speaker if speaker is not None else who}
    if content_tag in turn:
        out["value"] = turn[content_tag]
    else:
        issues.append(Issue("missing_field", f"message has no '{content_tag}'", field=f"{path}.{content_tag}"))
    return out
