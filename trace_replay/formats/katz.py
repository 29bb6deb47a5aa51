"""SwiftDiffusion / Katz production trace: ``diffusion_model_request_trace.json``.

Schema: a JSON array of ``{timestamp, ip, scene_id: "A"|"B", base_model_id (may be null),
controlnets: [id] or null, loras: [id or null] or null}``, timestamp in seconds. The instance is
the (scene_id, ip) pair.

Two paths, one result. The fast path hands the array to Arrow's multithreaded JSON reader as a
stream of objects (a 3.5M-request file loads in seconds, no Python object per request). It is
only trusted when every column validates; anything odd (a bad row, ids that are numbers, a
pretty-printed file Arrow cannot chunk) falls back to the exact path, which decodes object by
object, knows the line of each, and raises or (``lenient``) counts and skips.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from trace_replay.table import CONTROLNET, LORA, RequestTable, SkipReport, build_table

FIELDS = ("timestamp", "ip", "scene_id", "base_model_id", "controlnets", "loras")
# '}' ws ',' ws '{' only separates top-level objects: objects here hold no nested objects, and if
# it ever sat inside a string the newline we put there makes the JSON invalid, so the fast path
# fails loudly and the exact path takes over.
_SEPARATOR = re.compile(rb"\}\s*,\s*\{")


class _FastPathRejected(Exception):
    pass


def load_katz(path: str | Path, lenient: bool = False) -> RequestTable:
    path = Path(path)
    try:
        return _fast(path)
    except _FastPathRejected:
        pass
    return _exact(path, path.read_text(encoding="utf-8-sig"), lenient)


def _fast(path: Path) -> RequestTable:
    # Cheap layout first (one object per line, as `t2i trace synth` writes); then any layout:
    # raw newlines are never inside JSON strings, so they can go and each separator becomes one.
    # The file is read again for the second try rather than kept: it is the memory peak.
    lines = path.read_bytes().replace(b"},\n{", b"}\n{")
    if lines.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        lines = lines[3:]
    first, last = lines.find(b"["), lines.rfind(b"]")
    if first < 0 or last < first or lines[:first].strip() or lines[last + 1:].strip():
        raise _FastPathRejected
    tbl = _arrow_read(memoryview(lines)[first + 1:last])
    del lines
    if tbl is None:
        data = path.read_bytes()
        body = data[data.find(b"[") + 1:data.rfind(b"]")].replace(b"\r", b"").replace(b"\n", b"")
        del data
        tbl = _arrow_read(_SEPARATOR.sub(b"}\n{", body)) if body.strip() else None
    if tbl is None:
        raise _FastPathRejected
    return _from_arrow(path, tbl)


def _arrow_read(body: bytes | memoryview):
    """Arrow table of the request objects, or None if Arrow rejects the text."""
    import pyarrow as pa
    import pyarrow.json as pj

    tbl = None
    # ids are strings in the published schema; an all-integer anonymisation is read as int64 and
    # cast, anything mixed goes to the exact path
    for ids in (pa.string(), pa.int64()):
        schema = pa.schema([
            ("timestamp", pa.float64()), ("ip", ids), ("scene_id", ids), ("base_model_id", ids),
            ("controlnets", pa.list_(ids)), ("loras", pa.list_(ids)),
        ])
        try:
            tbl = pj.read_json(
                pa.py_buffer(body),
                read_options=pj.ReadOptions(block_size=1 << 25, use_threads=True),
                parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
            )
            break
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue
    if tbl is None or tbl.num_rows == 0:
        return None
    if tbl.schema.field("ip").type != pa.string():
        tbl = tbl.cast(pa.schema([(f.name, f.type if f.name == "timestamp" else
                                   (pa.list_(pa.string()) if pa.types.is_list(f.type) else pa.string()))
                                  for f in tbl.schema]))
    return tbl


def _from_arrow(path: Path, tbl) -> RequestTable:
    import pyarrow as pa
    import pyarrow.compute as pc

    n = tbl.num_rows
    ts = tbl.column("timestamp").to_numpy(zero_copy_only=False)
    if tbl.column("timestamp").null_count or not np.all(np.isfinite(ts)):
        raise _FastPathRejected
    if tbl.column("ip").null_count or tbl.column("scene_id").null_count:
        raise _FastPathRejected

    def dict_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
        enc = pc.dictionary_encode(col).combine_chunks()
        vocab = enc.dictionary.to_pylist()
        order = np.argsort(np.asarray(vocab, dtype=object)) if vocab else np.zeros(0, np.int64)
        rank = np.empty(len(vocab), dtype=np.int32)
        rank[order] = np.arange(len(vocab), dtype=np.int32)  # sorted vocabularies, as in encode()
        codes = enc.indices.to_numpy(zero_copy_only=False)
        out = np.full(codes.shape[0], -1, dtype=np.int32)
        valid = ~np.asarray(enc.indices.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        out[valid] = rank[codes[valid].astype(np.int64)]
        return out, [vocab[i] for i in order]

    service, services = dict_codes(tbl.column("scene_id"))
    pair = pc.binary_join_element_wise(tbl.column("scene_id"), tbl.column("ip"), "/")
    instance, instances = dict_codes(pair)
    base, bases = dict_codes(tbl.column("base_model_id"))

    lists = []
    for kind, name in ((CONTROLNET, "controlnets"), (LORA, "loras")):
        col = tbl.column(name).combine_chunks()
        lens = col.value_lengths().fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        values = col.flatten()  # values of null lists are skipped by flatten
        codes, vocab = dict_codes(pa.chunked_array([values]))
        owner = np.repeat(np.arange(n, dtype=np.int64), lens)
        keep = codes >= 0  # null entries are not adapters
        lists.append((kind, owner[keep], codes[keep], vocab))
    # merge the two lists per request, ControlNets first: a stable sort on the owning row
    owner = np.concatenate([lists[0][1], lists[1][1]])
    order = np.argsort(owner, kind="stable")
    kinds = np.concatenate([np.zeros(lists[0][1].size, np.int8), np.ones(lists[1][1].size, np.int8)])
    codes = np.concatenate([lists[0][2], lists[1][2]])
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner, minlength=n), out=offsets[1:])
    return build_table(
        n, time=ts, service=service, instance=instance, base_model=base,
        adapter_offsets=offsets, adapter_kind=kinds[order], adapter_id=codes[order],
        services=services, instances=instances, base_models=bases,
        controlnet_ids=lists[0][3], lora_ids=lists[1][3], source=str(path), format="katz",
    )


def _id(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"id must be a string or integer, got {json.dumps(value)[:40]}")
    return str(value)


def _id_list(value: object, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list or null, got {json.dumps(value)[:40]}")
    return [s for s in (_id(v) for v in value) if s is not None]


def _exact(path: Path, text: str, lenient: bool) -> RequestTable:
    """Object-by-object decode with line numbers; the reference the fast path must agree with."""
    skipped = SkipReport()
    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "[":
        raise _error(path, text, pos, "expected a JSON array of request objects")
    pos = _skip_ws(text, pos + 1)
    rows: list[tuple] = []
    cn_ids: dict[str, int] = {}
    lora_ids: dict[str, int] = {}
    line, counted_to = 1, 0  # line counting is incremental: a recount per row is quadratic
    while pos < len(text) and text[pos] != "]":
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _error(path, text, exc.pos, f"invalid JSON: {exc.msg}") from None
        try:
            rows.append(_row(obj))
        except ValueError as exc:
            skipped.raise_or_skip(lenient, str(path), line, str(exc))
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos < len(text) and text[pos] != "]":
            raise _error(path, text, pos, "expected ',' or ']' between request objects")
    if pos >= len(text):
        raise _error(path, text, pos, "unterminated JSON array")
    n = len(rows)
    services = sorted({r[2] for r in rows})
    instances = sorted({f"{r[2]}/{r[1]}" for r in rows})
    bases = sorted({r[3] for r in rows if r[3] is not None})
    for r in rows:
        for v in r[4]:
            cn_ids.setdefault(v, 0)
        for v in r[5]:
            lora_ids.setdefault(v, 0)
    cn_vocab, lora_vocab = sorted(cn_ids), sorted(lora_ids)
    cn_code = {v: i for i, v in enumerate(cn_vocab)}
    lora_code = {v: i for i, v in enumerate(lora_vocab)}
    svc = {v: i for i, v in enumerate(services)}
    inst = {v: i for i, v in enumerate(instances)}
    base = {v: i for i, v in enumerate(bases)}
    offsets = np.zeros(n + 1, dtype=np.int64)
    kinds: list[int] = []
    ids: list[int] = []
    for i, r in enumerate(rows):
        kinds += [CONTROLNET] * len(r[4]) + [LORA] * len(r[5])
        ids += [cn_code[v] for v in r[4]] + [lora_code[v] for v in r[5]]
        offsets[i + 1] = len(ids)
    return build_table(
        n, time=np.array([r[0] for r in rows], dtype=np.float64),
        service=np.array([svc[r[2]] for r in rows], dtype=np.int32),
        instance=np.array([inst[f"{r[2]}/{r[1]}"] for r in rows], dtype=np.int32),
        base_model=np.array([-1 if r[3] is None else base[r[3]] for r in rows], dtype=np.int32),
        adapter_offsets=offsets, adapter_kind=np.array(kinds, np.int8), adapter_id=np.array(ids, np.int32),
        services=services, instances=instances, base_models=bases, controlnet_ids=cn_vocab,
        lora_ids=lora_vocab, source=str(path), format="katz", skipped=skipped,
    )


def _row(obj: object) -> tuple:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a request object, got {type(obj).__name__}")
    ts = obj.get("timestamp")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"timestamp must be a finite number of seconds, got {json.dumps(ts)[:40]}")
    ip, scene = _id(obj.get("ip")), _id(obj.get("scene_id"))
    if ip is None:
        raise ValueError("ip (the serving instance) is missing")
    if scene is None:
        raise ValueError("scene_id (the service) is missing")
    return (float(ts), ip, scene, _id(obj.get("base_model_id")),
            _id_list(obj.get("controlnets"), "controlnets"), _id_list(obj.get("loras"), "loras"))


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _error(path: Path, text: str, pos: int, reason: str):
    from trace_replay.table import TraceFormatError

    return TraceFormatError(str(path), text.count("\n", 0, pos) + 1, reason)
