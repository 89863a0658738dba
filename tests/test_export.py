import pytest

from msenc_lib import storage
from msenc_lib.errors import InputDataError
from msenc_lib.export import ExportConfig, resolve_model_uri, run_export


def _fake_run(tmp_path, tag):
    model, emb = tmp_path / f"model-{tag}", tmp_path / f"emb-{tag}"
    (model / "tokenizer").mkdir(parents=True)
    (model / "config.json").write_text(f'{{"tag": "{tag}"}}')
    (model / "tokenizer" / "tokenizer.json").write_text("{}")
    emb.mkdir()
    (emb / "embeddings.parquet").write_bytes(b"PAR1" + tag.encode())
    return {"model": str(model), "embeddings": str(emb)}


@pytest.fixture(params=["local", "s3"])
def export_root(request, tmp_path):
    return str(tmp_path / "exports") if request.param == "local" else request.getfixturevalue("s3").uri("exports")


def test_each_run_separate_and_latest_follows_the_newest(tmp_path, export_root):
    first = run_export(ExportConfig(), _fake_run(tmp_path, "a"), export_root, "run-1")
    assert storage.read_text(storage.join(first.exported["model"], "tokenizer", "tokenizer.json")) == "{}"
    assert storage.read_text(storage.join(resolve_model_uri(export_root), "config.json")) == '{"tag": "a"}'
    run_export(ExportConfig(), _fake_run(tmp_path, "b"), export_root, "run-2")
    assert resolve_model_uri(export_root) == storage.join(export_root, "run-2", "model")
    # the first run's outputs are untouched
    assert storage.read_text(storage.join(export_root, "run-1", "model", "config.json")) == '{"tag": "a"}'
    assert resolve_model_uri(storage.join(export_root, "run-1", "model")) == storage.join(export_root, "run-1", "model")


def test_bad_locations(tmp_path, export_root):
    with pytest.raises(InputDataError, match="neither a saved model"):
        resolve_model_uri(str(tmp_path))
    storage.write_text(storage.join(export_root, "LATEST"), "ghost\n")
    with pytest.raises(InputDataError, match="ghost"):
        resolve_model_uri(export_root)
    with pytest.raises(InputDataError, match="run name"):
        run_export(ExportConfig(), {}, export_root, "a/b")
