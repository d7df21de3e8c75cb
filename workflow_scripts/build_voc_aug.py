"""Rule voc12_aug: assemble VOC 2012 + SBD into one dataset root with train_aug."""

from wsss_core.data.prepare_voc import build_aug_dataset
from wsss_core.workflow import logged

with logged(snakemake.log[0]):
    summary = build_aug_dataset(
        snakemake.input.voc, snakemake.input.sbd, snakemake.output[0], workers=snakemake.threads
    )
    print(summary)
