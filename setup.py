"""Packaging for p3scan (setuptools)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="p3scan",
    version="3.0.0",
    description="Transparent POP3/POP3S/SMTP proxy that scans mail for viruses",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="GPL-2.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["p3scan", "p3scan.*"]),
    install_requires=[
        "python-daemon>=3.0",
        "lockfile>=0.12",
        "configobj>=5.0.8",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            "hypothesis>=6",
            "aiosmtpd>=1.4",
            "trustme>=1.0",
            "ruff>=0.5",
            "pytest-timeout>=2",
            "mypy>=1.8",
            "import-linter>=2",
        ],
    },
    entry_points={"console_scripts": ["p3scan = p3scan.cli:main"]},
    classifiers=[
        "Environment :: No Input/Output (Daemon)",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Topic :: Communications :: Email :: Filters",
    ],
)
