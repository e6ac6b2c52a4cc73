"""Load tests and side-by-side baselines. Speed is only ever claimed from these scripts' output."""
