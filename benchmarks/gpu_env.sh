# Sourced by the GPU scripts: apache-tvm-ffi from the cp312 wheel in .whl/ (carried to the GPU
# machine, which has no network) when it is not installed, and this checkout on PYTHONPATH.
if ! python3 -c "import tvm_ffi" 2>/dev/null && ls .whl/apache_tvm_ffi-*cp312*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/apache_tvm_ffi-*cp312*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
