"""The ModelDeployment API's names, defined once: the pydantic models (``model/``), the
CRD generator, the object builders, the kopf registration and local manifests use these.
"""

from __future__ import annotations

GROUP = "mlrollout.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
