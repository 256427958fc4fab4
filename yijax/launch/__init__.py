"""`yijax launch`: run the same `yijax train` command on every host of a TPU pod or GPU cluster.

tpu.py    Cloud TPU VM slices through gcloud (sync the code, set up once, train on --worker=all)
slurm.py  SLURM GPU jobs (an sbatch script whose srun starts one process per node or per GPU)
common.py plans as lists of steps: printed by --dry_run, or run in order, stopping at a failure
"""
