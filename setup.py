from pathlib import Path

from setuptools import find_packages, setup


def read_requirements(name):
    lines = Path(__file__).with_name(name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


setup(
    name="minichatgpt",
    version="0.1.0",
    description="The ChatGPT training recipe (SFT -> reward model -> PPO, with LoRA and PPO-ptx) on any "
    "Hugging Face causal LM, from one CPU to many GPU nodes.",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["minichatgpt", "minichatgpt.*"]),
    python_requires=">=3.9",
    install_requires=read_requirements("requirements.txt"),
    extras_require={
        "dev": ["pytest>=7", "pytest-timeout>=2", "hypothesis>=6", "httpx>=0.27", "playwright>=1.40", "gguf>=0.10",
                "packaging", "openai>=1.30"],
        # DeepSpeed's sdist imports torch while building: install it with --no-build-isolation (see .ci/run).
        "deepspeed": ["deepspeed>=0.19.4"],
        # colossalai pins torch<=2.5.1 and transformers==4.51.3: install it into its own environment.
        "colossalai": ["colossalai>=0.4"],
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "torchao>=0.18"],
        "cuda": ["bitsandbytes>=0.45"],
        "gguf": ["gguf>=0.10"],
        "tensorboard": ["tensorboard>=2.14"],
        # Peers for benchmarks/compare_*.py. TRL's PPO trainer left TRL in 1.13: compare_ppo.py runs it from
        # its own environment with trl==1.12.0 (see that script's docstring).
        "bench": ["trl>=1.16,<2"],
    },
    package_data={"minichatgpt.serving": ["static/*"]},
    entry_points={"console_scripts": ["minichatgpt=minichatgpt.cli:main"]},
)
