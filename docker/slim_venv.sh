#!/bin/sh
# Shrinks a finished virtual environment for an image: drops the packages' own test suites and
# the installers (pip, setuptools, wheel), which nothing needs at run time in an immutable image.
# With --serve it also drops what only offline tools of onnxruntime use (quantization, transformer
# optimisers, the C-API library that the Python binding does not load); the train image keeps them
# because `histoedge export` quantizes with onnxruntime.quantization. It drops numpy's build tools
# (f2py, distutils, C headers), type stubs (.pyi), and Pillow's AVIF codec (about 5 MB: the server
# refuses every format but PNG, JPEG, TIFF and BMP before decoding).
# --keep-pip keeps the installers (the train image installs histoedge in a later layer).
# Byte-code caches stay: without them every start (and every HEALTHCHECK) recompiles the sources.
# Usage: slim_venv.sh [--serve] [--keep-pip] VENV
set -eu
serve=false
keep_pip=false
while [ $# -gt 1 ]; do
    case $1 in
        --serve) serve=true ;;
        --keep-pip) keep_pip=true ;;
        *) echo "slim_venv.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
venv=${1:?usage: slim_venv.sh [--serve] [--keep-pip] VENV}
python=$venv/bin/python
if ! $keep_pip; then
    "$python" -m pip uninstall --yes --quiet pip setuptools wheel 2>/dev/null || true
    rm -f "$venv"/bin/pip "$venv"/bin/pip3 "$venv"/bin/pip3.*
fi
rm -f "$venv"/bin/activate.csh "$venv"/bin/activate.fish
site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Test suites shipped inside wheels (numpy/_core/tests, scipy/*/tests, ...); not the testing helpers.
find "$site" -depth -type d -name tests -path '*/site-packages/*/*' -exec rm -rf {} +
if $serve && [ -d "$site/onnxruntime" ]; then
    ort=$site/onnxruntime
    rm -rf "$ort/quantization" "$ort/transformers" "$ort/tools" "$ort/datasets"
    # The Python binding is self-contained; keep the C-API library only if importing needs it.
    mkdir -p /tmp/ort-capi-aside
    for lib in "$ort"/capi/libonnxruntime.so*; do
        [ -e "$lib" ] && mv "$lib" /tmp/ort-capi-aside/
    done
    if ! "$python" -c 'import onnxruntime; onnxruntime.get_available_providers()' >/dev/null 2>&1; then
        mv /tmp/ort-capi-aside/* "$ort/capi/" 2>/dev/null || true
    fi
    rm -rf /tmp/ort-capi-aside
fi
if $serve; then
    rm -rf "$site/numpy/f2py" "$site/numpy/distutils" "$site/numpy/_core/include" "$site/numpy/_core/lib"
    rm -f "$venv/bin/f2py" "$venv/bin/numpy-config" "$venv/bin/onnxruntime_test"
    find "$site" -name '*.pyi' -delete
    rm -f "$site"/PIL/_avif.*.so "$site"/pillow.libs/libavif*
    if [ -d "$site/PIL" ]; then
        "$python" -c 'from PIL import Image, ImageDraw, ImageFont, features
for codec in ("jpg", "zlib", "libtiff", "freetype2"):
    assert features.check(codec), codec
Image.new("RGB", (8, 8)).save(__import__("io").BytesIO(), "PNG")' \
            || { echo "slim_venv.sh broke Pillow" >&2; exit 1; }
    fi
fi
find "$site" -depth -type d -name __pycache__ -empty -delete
"$python" -c 'import numpy' || { echo "slim_venv.sh broke the environment" >&2; exit 1; }
