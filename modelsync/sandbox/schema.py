"""The paths the sandbox serves and the request bodies it accepts, written down here.

Deliberately not derived from modelsync's own manifest schema: the sandbox stands for the
service, so that it can catch modelsync sending what the service refuses.
"""

from __future__ import annotations

from typing import Any

LOAD_MODEL_PATH = "/api/v3/load_model"
# Path -> endpoint name.
ENDPOINTS = {
    LOAD_MODEL_PATH: "load_model",
    "/api/v4/dreambooth/load_model": "load_model",
    "/api/v4/dreambooth/model_list": "model_list",
    "/api/v6/images/model_reload": "model_reload",
    "/api/v4/dreambooth/model_reload": "model_reload",
}

MODEL_FORMATS = ("diffusers", "safetensors", "ckpt")
MODEL_CATEGORIES = (
    "stable_diffusion",
    "stable_diffusion_xl",
    "controlnet",
    "lora",
    "embeddings",
    "vae",
    "flux",
    "z_image",
)
LOAD_MODEL_REQUIRED = ("url", "model_id", "model_format", "model_category", "model_name")
MODEL_RELOAD_REQUIRED = ("model_id",)
_ENUMS: dict[str, tuple[str, ...]] = {
    "model_format": MODEL_FORMATS,
    "model_category": MODEL_CATEGORIES,
    "revision": ("fp16", "fp32"),
    "model_visibility": ("private", "public"),
    "force_load": ("yes", "no"),
    "hf_upload": ("yes", "no"),
}
# The API documents model_subcategory as nullable (one sample sends null).
_NULLABLE_STRINGS = ("model_subcategory", "model_image")
# The load_model fields a held model keeps (the key is not one of them).
LOAD_MODEL_FIELDS = (
    *LOAD_MODEL_REQUIRED,
    "revision",
    "model_visibility",
    "force_load",
    "hf_upload",
    *_NULLABLE_STRINGS,
)


def _label(field: str) -> str:
    # Laravel names a field in its messages with spaces for underscores.
    return field.replace("_", " ")


def validate(body: dict[str, Any], required: tuple[str, ...]) -> dict[str, list[str]]:
    """Laravel-style field errors for a load_model (or model_reload) body."""
    errors: dict[str, list[str]] = {}
    for name in required:
        value = body.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            errors[name] = [f"The {_label(name)} field is required."]
        elif not isinstance(value, str):
            errors[name] = [f"The {_label(name)} must be a string."]
    for name, allowed in _ENUMS.items():
        if name in errors or name not in body:
            continue
        if body[name] not in allowed:
            errors[name] = [f"The selected {_label(name)} is invalid."]
    for name in _NULLABLE_STRINGS:
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            errors[name] = [f"The {_label(name)} must be a string."]
    return errors
