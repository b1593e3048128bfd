"""``histoedge serve --trusted-keys``: only versions signed by a trusted key are served (issue 14)."""

from __future__ import annotations

import logging
import shutil

import pytest

from histoedge import HistoedgeError
from histoedge.export import signing
from histoedge.serving.client import InferenceClient
from tests.serving.helpers import MODEL, SIZE, sample_images
from tests.support.model_packages import write_model_version


def test_only_correctly_signed_versions_serve(tmp_path, start_server, caplog):
    key, public = signing.generate_keypair(tmp_path / "keys", "release")
    stranger, _ = signing.generate_keypair(tmp_path / "keys", "stranger")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(public, trusted)
    repo = tmp_path / "models"
    release, impostor = signing.load_private_key(key), signing.load_private_key(stranger)

    signed = write_model_version(repo, MODEL, 1, size=SIZE)
    signing.sign_version(signed, release)
    write_model_version(repo, MODEL, 2, size=SIZE)                       # unsigned
    signing.sign_version(write_model_version(repo, MODEL, 3, size=SIZE), impostor)  # wrongly signed
    tampered = write_model_version(repo, MODEL, 4, size=SIZE)
    signing.sign_version(tampered, release)
    manifest = tampered / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"threshold": 0.5', '"threshold": 0.01'))
    swapped = write_model_version(repo, MODEL, 5, size=SIZE)
    signing.sign_version(swapped, release)
    (swapped / "model.onnx").write_bytes((repo / MODEL / "2" / "model.onnx").read_bytes())  # model swapped
    other = write_model_version(repo, "other", 1, size=SIZE)
    signing.sign_version(other, release)

    caplog.set_level(logging.INFO)
    server = start_server(repo, trusted_keys=trusted)
    assert server.models.versions(MODEL) == (1,)
    assert server.models.versions("other") == (1,)
    log = caplog.text
    assert "tiny version 2" in log and "is not signed" in log
    assert "tiny version 3" in log and "not trusted" in log
    assert "tiny version 4" in log and "does not match the manifest" in log
    assert "tiny version 5" in log and "does not match the SHA-256" in log
    with InferenceClient(f"127.0.0.1:{server.port}") as client:
        prediction, = client.classify_arrays(sample_images(1), MODEL)
        assert prediction.label in ("benign", "malignant")
        assert client.model_ready(MODEL, "1") and not client.model_ready(MODEL, "2")

    unsigned_server = start_server(repo)  # without --trusted-keys everything loadable serves
    assert unsigned_server.models.versions(MODEL) == (1, 2, 3, 4)


def test_trusted_keys_folder_must_hold_keys(tmp_path, start_server):
    write_model_version(tmp_path / "models", MODEL, 1, size=SIZE)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HistoedgeError, match="no public keys"):
        start_server(tmp_path / "models", trusted_keys=tmp_path / "empty")
