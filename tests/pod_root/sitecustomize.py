"""Stand-in for a KFP step pod's own filesystem, for the pipeline replay (tests/kfp_replay.py).

In a pod, KFP's launcher mirrors artifacts at /minio, /s3 and /gcs and Kubernetes mounts the service account at
/var/run/secrets/kubernetes.io/serviceaccount. A step replayed as a local process has those absolute paths
under its own directory ``MSENC_REPLAY_POD_ROOT``: this module (imported by Python at start-up, from the step's
PYTHONPATH) points kfp's artifact mounts, the kubernetes client's in-cluster files and msenc's service-account
directory there. Nothing else is changed.
"""

import os

_root = os.environ.get("MSENC_REPLAY_POD_ROOT")
if _root:
    from kfp.dsl.types import artifact_types as _artifacts
    from kubernetes.config import incluster_config as _incluster

    from msenc_lib.launch import base as _launch

    _artifacts._GCS_LOCAL_MOUNT_PREFIX = f"{_root}/gcs/"
    _artifacts._MINIO_LOCAL_MOUNT_PREFIX = f"{_root}/minio/"
    _artifacts._S3_LOCAL_MOUNT_PREFIX = f"{_root}/s3/"
    _sa = f"{_root}/var/run/secrets/kubernetes.io/serviceaccount"
    _incluster.SERVICE_TOKEN_FILENAME = f"{_sa}/token"
    _incluster.SERVICE_CERT_FILENAME = f"{_sa}/ca.crt"
    _launch.SERVICE_ACCOUNT_DIR = _sa
