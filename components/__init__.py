"""KFP v2 components of msenc: one thin Python-function component per stage.

Each ``components/<stage>/component.py`` holds the component function (its body only parses parameters and
calls the ``msenc_lib`` stage function) and ``build(image)``, which makes the KFP component on a given
msenc image. Installed, this package is ``msenc_components``.
"""

DEFAULT_IMAGE = "localhost/msenc-python:0.1.0"
