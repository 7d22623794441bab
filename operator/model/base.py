"""The two bases of every model class (pure): spec models take camelCase keys and refuse
unknown fields; status models also take snake_case and keep what they do not know.
"""

from __future__ import annotations

from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    model_validator,
)
from pydantic.alias_generators import to_camel


class _Spec(BaseModel):
    """Spec models accept exactly what the API server accepts (kubectl, fieldValidation=Strict):

    - unknown fields are an error (a typo must not be silently ignored locally);
    - strict types: no ``"10"`` for a number, no ``true`` for an integer, no ``"yes"`` for a
      boolean; a whole float (``10.0``) is an integer, as kube-openapi takes it and as kubectl
      sends it (``Int``);
    - ``null`` for a field is as if it were absent, as the API server prunes it (or applies
      the field's default);
    - no NaN or infinity (JSON has none).

    ``tests/unit/test_spec_parity.py`` checks this against the CRD over generated specs.
    """

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: object) -> object:
        if isinstance(data, dict) and any(v is None for v in data.values()):
            known = set(cls.model_fields)
            known |= {f.alias for f in cls.model_fields.values() if f.alias}
            return {k: v for k, v in data.items() if not (v is None and k in known)}
        return data


class _Status(BaseModel):
    # Status written by a newer or older operator must still load: ignore what we do not know.
    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="ignore",
    )
