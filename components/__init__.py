"""KFP v2 components of msenc: one thin Python-function component per stage.

Each ``components/<stage>/component.py`` holds the component function (its body only passes its parameters
to one ``msenc_lib`` call) and ``build(image)``, which makes the KFP component on a given msenc image.
Installed, this package is ``msenc_components``.

The default images are placeholders in a registry that does not exist (``registry.example.com``): a cluster
pulls images, so compile the pipeline with the references you pushed (``msenc pipeline compile --image ...
--job-image ...``, README "Kubeflow"). ``localhost/`` images never resolve on a cluster.
"""

DEFAULT_IMAGE = "registry.example.com/msenc/msenc-python:0.1.0"
"""The CPU image (images/Dockerfile) every step runs on."""
DEFAULT_JOB_IMAGE = "registry.example.com/msenc/msenc-python-cuda:0.1.0"
"""The CUDA image (images/Dockerfile.cuda) of the GPU training pods (PyTorchJob) and of a GPU train step."""
LOCAL_IMAGE = "localhost/msenc-python:dev"
"""What `make image` builds: the image of local container runs (kfp.local's DockerRunner)."""
