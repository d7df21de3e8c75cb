"""wsss_core: the code behind the wsss Snakemake workflow.

Each pipeline stage is one module with a plain-Python entry point; the workflow
scripts under ``workflow_scripts/`` only translate Snakemake's objects into calls.
"""

__version__ = "0.1.0"
