"""Signed model packages: keygen, sign, verify (issue 14).  Serving them: tests/serving/test_serving_signed.py."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import histoedge.cli
from histoedge.export import signing
from histoedge.export.errors import SignatureError
from histoedge.export.verify import verify_version
from tests.support.model_packages import write_model_version


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    private, public = signing.generate_keypair(folder, "release")
    other_private, other_public = signing.generate_keypair(tmp_path / "other", "other")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(public, trusted)
    return {"private": private, "public": public, "other": other_private, "trusted": trusted}


def test_keygen_writes_a_private_key_only_its_owner_reads(keys, tmp_path):
    assert os.stat(keys["private"]).st_mode & 0o777 == 0o600
    assert keys["public"].read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(SignatureError, match="already exists"):
        signing.generate_keypair(keys["private"].parent, "release")
    with pytest.raises(SignatureError, match="cannot read the private key"):
        signing.load_private_key(keys["public"])


def test_sign_and_verify(keys, tmp_path):
    version = write_model_version(tmp_path / "models", "tiny", 1)
    trusted = signing.load_trusted_keys(keys["trusted"])
    with pytest.raises(SignatureError, match="not signed"):
        signing.verify_signature(version, trusted)
    signing.sign_version(version, signing.load_private_key(keys["private"]))
    verified = signing.verify_signature(version, trusted)
    assert verified.manifest_bytes == (version / "manifest.json").read_bytes()
    assert verified.key_id == signing.key_id(signing.load_public_key(keys["public"]))
    document = json.loads((version / signing.SIGNATURE_FILE).read_text())
    assert document["algorithm"] == "ed25519" and document["signed_file"] == "manifest.json"

    manifest = (version / "manifest.json").read_text()
    (version / "manifest.json").write_text(manifest.replace('"threshold": 0.5', '"threshold": 0.05'))
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify_signature(version, trusted)
    (version / "manifest.json").write_text(manifest)
    signing.sign_version(version, signing.load_private_key(keys["other"]))
    with pytest.raises(SignatureError, match="not trusted"):
        signing.verify_signature(version, trusted)
    (version / signing.SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        signing.verify_signature(version, trusted)
    with pytest.raises(SignatureError, match="no public keys"):
        signing.load_trusted_keys(tmp_path)


def test_cli_keygen_sign_and_verify(tmp_path, capsys):
    version = write_model_version(tmp_path / "models", "tiny", 1)
    assert histoedge.cli.main(["export", "keygen", "--out", str(tmp_path / "k"), "--name", "site"]) == 0
    assert "key id" in capsys.readouterr().out
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(tmp_path / "k" / "site.pub", trusted)
    report = verify_version(version, trusted_keys=trusted)
    assert ("signature", False) in [(name, ok) for name, ok, _ in report.checks]
    assert histoedge.cli.main(["export", "sign", str(version), "--key", str(tmp_path / "k" / "site.key")]) == 0
    capsys.readouterr()
    histoedge.cli.main(["export", "verify", str(version), "--trusted-keys", str(trusted)])
    out = capsys.readouterr().out  # (test packages carry no ONNX metadata, so the verdict is FAILED)
    assert "ok   signature: Ed25519, trusted key" in out and "FAIL sha256" not in out
    assert "not checked" in verify_version(version).summary()  # present, no keys given
    model = version / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")  # the manifest's SHA-256 no longer matches
    histoedge.cli.main(["export", "verify", str(version), "--trusted-keys", str(trusted)])
    assert "FAIL sha256" in capsys.readouterr().out


def test_export_sign_flag(runs, tmp_path, capsys):
    private, public = signing.generate_keypair(tmp_path / "k", "site")
    repo = tmp_path / "models"
    assert histoedge.cli.main(["export", "--run", str(runs["single"]), "--repo", str(repo), "--name", "signed",
                               "--sign", str(private)]) == 0
    assert "signed" in capsys.readouterr().out
    signing.verify_signature(repo / "signed" / "1", {signing.key_id(signing.load_public_key(public)):
                                                     signing.load_public_key(public)})
    assert histoedge.cli.main(["export", "--run", str(runs["single"]), "--repo", str(repo), "--name", "x",
                               "--sign", str(public)]) == 2  # a public key cannot sign: refused up front
    assert not (repo / "x").exists() or not any((repo / "x").iterdir())
