"""Portable on-disk model format: ``.npz`` (no pickles) or ``.json``.

Both formats hold the same three things: the spec, the flat parameter vector and
a JSON-safe metadata dict. This module only reads files; ``dump_model`` returns
bytes and ``runtime.files.save_model`` writes them atomically (models/ lies below
the runtime, so the project's one atomic-write helper is not reachable from here).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from fedmq.models.base import FloatArray, as_param_vector
from fedmq.models.errors import ModelError
from fedmq.models.spec import ModelSpec

FORMAT = "fedmq-model"
VERSION = 1
_SUFFIXES = (".npz", ".json")


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ModelError(f"unsupported model file suffix {path.suffix!r}; use one of {_SUFFIXES}")
    return suffix


def _reject_constant(name: str) -> Any:
    raise ModelError(f"model file contains non-standard JSON constant {name}")


def _dumps(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{what} is not JSON-serializable: {exc}") from exc


def dump_model(
    spec: ModelSpec,
    params: ArrayLike,
    *,
    metadata: dict[str, Any] | None = None,
    suffix: str = ".npz",
) -> bytes:
    """``spec``, ``params`` and ``metadata`` as the bytes of a ``.npz`` or ``.json`` file.

    Pure: callers write the bytes (``runtime.files.save_model`` does so atomically).
    """
    fmt = _suffix(Path(f"model{suffix}"))
    if not isinstance(spec, ModelSpec):
        raise ModelError(f"spec must be a ModelSpec, got {type(spec).__name__}")
    vector = as_param_vector(params, spec.n_params)
    meta = {} if metadata is None else metadata
    if not isinstance(meta, dict):
        raise ModelError(f"metadata must be a dict, got {type(meta).__name__}")
    spec_json = _dumps(spec.to_dict(), "spec")
    meta_json = _dumps(meta, "metadata")

    if fmt == ".json":
        document = {
            "format": FORMAT,
            "version": VERSION,
            "spec": spec.to_dict(),
            "params": vector.tolist(),
            "metadata": meta,
        }
        return (_dumps(document, "model") + "\n").encode("utf-8")

    buf = io.BytesIO()
    # Strings as 0-d unicode arrays keep the archive loadable with allow_pickle=False.
    np.savez(
        buf,
        format=np.array(FORMAT),
        version=np.array(VERSION, dtype=np.int64),
        spec=np.array(spec_json),
        metadata=np.array(meta_json),
        params=vector,
    )
    return buf.getvalue()


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{what} is not valid JSON: {exc}") from exc


def _check_header(fmt: object, version: object) -> None:
    if fmt != FORMAT:
        raise ModelError(f"not a {FORMAT} file (format field is {fmt!r})")
    if isinstance(version, bool) or version != VERSION:
        raise ModelError(f"unsupported {FORMAT} version {version!r}; this build reads {VERSION}")


def _finish(spec_obj: Any, params: Any, meta: Any) -> tuple[ModelSpec, FloatArray, dict[str, Any]]:
    spec = ModelSpec.from_dict(spec_obj)
    if not isinstance(meta, dict):
        raise ModelError(f"metadata must be a JSON object, got {type(meta).__name__}")
    return spec, as_param_vector(params, spec.n_params), meta


def _load_json(data: bytes) -> tuple[ModelSpec, FloatArray, dict[str, Any]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelError(f"model file is not UTF-8 text: {exc}") from exc
    doc = _parse_json(text, "model file")
    if not isinstance(doc, dict):
        raise ModelError("model file must contain a JSON object")
    missing = [k for k in ("format", "version", "spec", "params") if k not in doc]
    if missing:
        raise ModelError(f"model file is missing field(s): {missing}")
    _check_header(doc["format"], doc["version"])
    return _finish(doc["spec"], doc["params"], doc.get("metadata", {}))


def _npz_string(archive: Any, key: str) -> str:
    value = archive[key]
    if value.shape != () or value.dtype.kind != "U":
        raise ModelError(f"model file field {key!r} must be a unicode string")
    return str(value.item())


def _load_npz(data: bytes) -> tuple[ModelSpec, FloatArray, dict[str, Any]]:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # numpy's own message for non-zip bytes advises allow_pickle=True: never.
        raise ModelError("model file is not a readable .npz archive") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelError("model file is a single .npy array, not an .npz archive")
    try:
        with archive:
            missing = [k for k in ("format", "version", "spec", "params") if k not in archive]
            if missing:
                raise ModelError(f"model file is missing field(s): {missing}")
            version = archive["version"]
            _check_header(
                _npz_string(archive, "format"),
                int(version.item()) if version.shape == () and version.dtype.kind == "i" else None,
            )
            spec_obj = _parse_json(_npz_string(archive, "spec"), "spec")
            meta_text = _npz_string(archive, "metadata") if "metadata" in archive else "{}"
            meta = _parse_json(meta_text, "metadata")
            params = archive["params"]
    except ModelError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        # Damaged members only surface when read, after the zip directory parsed fine.
        raise ModelError(f"model file has a corrupt .npz member: {exc}") from exc
    return _finish(spec_obj, params, meta)


def load_model(path: str | os.PathLike[str]) -> tuple[ModelSpec, FloatArray, dict[str, Any]]:
    """Read a model written by ``save_model``; returns ``(spec, params, metadata)``."""
    source = Path(path)
    suffix = _suffix(source)
    try:
        data = source.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"model file not found: {source}") from exc
    except OSError as exc:
        raise ModelError(f"cannot read model file {source}: {exc}") from exc
    try:
        return _load_json(data) if suffix == ".json" else _load_npz(data)
    except ModelError as exc:
        raise ModelError(f"{source}: {exc}") from exc
