"""KFP component ``fingerprint``: a content hash of an external input, so that the steps reading it are
cached only while its content stays the same."""

from kfp import dsl

from msenc_components import DEFAULT_IMAGE


def fingerprint(uri: str) -> str:
    """Hash of the size and change token (S3 ETag, local mtime) of every file under ``uri`` (a file, folder,
    s3:// prefix or glob); "" for an empty ``uri``. KFP's cache key holds parameter values, not the content
    behind a URI: a step that reads ``uri`` takes this hash as a parameter, so a changed input is read again.
    """
    from msenc_lib.kfp_support import step_errors

    with step_errors("fingerprint"):
        from msenc_lib.storage import content_fingerprint

        return content_fingerprint(uri)


def build(image: str = DEFAULT_IMAGE):
    return dsl.component(fingerprint, base_image=image, install_kfp_package=False)
