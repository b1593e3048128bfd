"""Host-side helpers for ``run_container_test.sh`` (not a pytest module).

Runs in the host's Python, which needs numpy, opencv, onnxruntime, onnx and the
``histoedge`` package (for :mod:`tests.support.model_packages`'s tiny model).

Commands::

    container_helper.py make-repo MODELS IMAGES EXPECTED.json   tiny model + PNGs + expected output
    container_helper.py expect VERSION_DIR IMAGES EXPECTED.json  onnxruntime's answers for the PNGs
    container_helper.py compare EXPECTED.json CLASSIFY.jsonl     `histoedge classify --json` vs onnxruntime
    container_helper.py image-config IMAGE.json FIELD            Entrypoint|Cmd|User|Env|Healthcheck
    container_helper.py free-ports N                             N free loopback TCP ports
    container_helper.py find-server PID                          descendant of PID running `histoedge serve`
    container_helper.py uid PID                                  real uid of a process
    container_helper.py metrics URL                              fetch a Prometheus page, check its format
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path

MODEL_NAME = "tiny"
IMAGE_SIZE = 16
TOLERANCE = 1e-4


def make_repo(models: Path, images: Path, expected_path: Path) -> None:
    """Write MODELS/tiny/1, a few PNGs of other sizes, and what onnxruntime says about them."""
    import cv2
    import numpy as np
    from tests.support.model_packages import write_model_version

    version_dir = write_model_version(models, MODEL_NAME, version=1, size=IMAGE_SIZE, seed=3)
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    # Reddish, bluish and noisy tiles at sizes other than the model's, so the server must resize.
    tiles = {
        "red.png": np.full((40, 40, 3), (200, 40, 60), np.uint8),
        "blue.png": np.full((24, 32, 3), (30, 60, 220), np.uint8),
        "noise.png": rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8),
    }
    for name, rgb in tiles.items():
        if not cv2.imwrite(str(images / name), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise SystemExit(f"could not write {images / name}")
    expect(version_dir, images, expected_path)


def expect(version_dir: Path, images: Path, expected_path: Path) -> None:
    """Write what onnxruntime on the host answers for every PNG in ``images``."""
    import cv2
    import numpy as np
    import onnxruntime
    from histoedge.export.manifest import Manifest

    manifest = Manifest.load(version_dir)
    manifest.check_checksum(version_dir)
    height, width = manifest.image_size
    session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    expected = {}
    for path in sorted(images.glob("*.png")):
        decoded = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        resized = cv2.resize(decoded, (width, height), interpolation=cv2.INTER_AREA)
        probabilities = session.run(["probabilities"], {"image": resized[None]})[0][0]
        if manifest.threshold is not None and manifest.positive_class is not None:
            positive = probabilities[manifest.positive_class] >= manifest.threshold
            label_index = manifest.positive_class if positive else 1 - manifest.positive_class
        else:
            label_index = int(np.argmax(probabilities))
        expected[path.name] = {"label": manifest.classes[label_index],
                               "probabilities": [float(p) for p in probabilities]}
    expected_path.write_text(json.dumps(expected, indent=2) + "\n")
    print(f"{manifest.name}/{manifest.version}: {json.dumps(expected)}")


def compare(expected_path: Path, classify_path: Path) -> None:
    """Exit 1 unless every image's label and probabilities match the host's onnxruntime run."""
    expected = json.loads(expected_path.read_text())
    lines = [json.loads(line) for line in classify_path.read_text().splitlines() if line.strip()]
    got = {Path(item["source"]).name: item for item in lines}
    problems = []
    if sorted(got) != sorted(expected):
        problems.append(f"classified {sorted(got)}, expected {sorted(expected)}")
    for name, want in expected.items():
        item = got.get(name)
        if item is None:
            continue
        if item.get("error"):
            problems.append(f"{name}: error {item['error']}")
            continue
        if item.get("label") != want["label"]:
            problems.append(f"{name}: label {item.get('label')!r}, expected {want['label']!r}")
        probabilities = item.get("probabilities") or []
        if len(probabilities) != len(want["probabilities"]) or any(
                abs(a - b) > TOLERANCE for a, b in zip(probabilities, want["probabilities"])):
            problems.append(f"{name}: probabilities {probabilities}, expected {want['probabilities']}")
    if problems:
        raise SystemExit("mismatch: " + "; ".join(problems))
    labels = sorted({item["label"] for item in got.values()})
    print(f"{len(got)} images match onnxruntime on the host (labels {labels}, tolerance {TOLERANCE})")


def image_config(inspect_path: Path, field: str) -> None:
    """Print a field of ``buildah inspect --type image`` output, list items one per line."""
    data = json.loads(inspect_path.read_text())
    if field == "Healthcheck":
        value = (data.get("Docker", {}).get("config") or {}).get("Healthcheck") or {}
        value = value.get("Test") or []
    else:
        value = (data.get("OCIv1", {}).get("config") or {}).get(field)
    if value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        print(item)


def free_ports(count: int) -> None:
    # Below the ephemeral range, as the pytest suites draw them: a bind(0) port can be handed to
    # an outgoing connection before the container's server binds it.
    from tests.support.ports import free_ports as draw

    print(" ".join(str(port) for port in draw(count)))


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(entry))
    return tree


def find_server(root: int, wait_seconds: float = 30.0) -> None:
    """Print the PID of the process under ``root`` whose command line is ``... histoedge serve``."""
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        tree, pending = _children(), [root]
        while pending:
            pid = pending.pop()
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                argv = []
            names = [os.path.basename(a.decode(errors="replace")) for a in argv if a]
            # The server itself, not buildah's chroot launcher whose arguments are the same command.
            program = names[1:2] if names and names[0].startswith("python") else names[:1]
            if program == ["histoedge"] and "serve" in names:
                print(pid)
                return
            pending.extend(tree.get(pid, []))
        time.sleep(0.5)
    raise SystemExit(f"no `histoedge serve` process under PID {root}")


def process_uid(pid: int) -> None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            print(line.split()[1])
            return
    raise SystemExit(f"no Uid line for PID {pid}")


def metrics(url: str) -> None:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    families = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    if not families:
        raise SystemExit(f"{url}: no Prometheus metric families")
    print(f"{url}: {len(families)} metric families")


def main(argv: list[str]) -> int:
    if not argv:
        raise SystemExit(__doc__)
    command, args = argv[0], argv[1:]
    if command == "make-repo":
        make_repo(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "expect":
        expect(Path(args[0]), Path(args[1]), Path(args[2]))
    elif command == "compare":
        compare(Path(args[0]), Path(args[1]))
    elif command == "image-config":
        image_config(Path(args[0]), args[1])
    elif command == "free-ports":
        free_ports(int(args[0]))
    elif command == "find-server":
        find_server(int(args[0]))
    elif command == "uid":
        process_uid(int(args[0]))
    elif command == "metrics":
        metrics(args[0])
    else:
        raise SystemExit(f"unknown command {command!r}\n{__doc__}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
