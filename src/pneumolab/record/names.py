"""The names of the files a job, a sweep, an evaluation and the report write: one list, read by writers and readers."""

# A job's folder.
RESULTS = "results.json"  # config, per-seed numbers, summary, ensemble, inference entry
FAILURE = "error.json"  # instead of results.json when the job failed: its config and the error
METRICS_CSV = "metrics.csv"  # every seed's per-epoch history
WEIGHTS = "model.safetensors"  # every non-diverged seed's weights
CURVES_PNG = "curves.png"
ROC_PNG = "roc.png"
CALIBRATION_PNG = "calibration.png"
FIGURES = (CURVES_PNG, ROC_PNG, CALIBRATION_PNG)

# A sweep's folder.
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_PNG = "summary.png"

# pneumolab-eval's output folder.
EVAL_JSON = "eval.json"
EVAL_CSV = "eval.csv"

# pneumolab-report's output folder.
REPORT_MD = "REPORT.md"
RUN_RECORD = "reproduce_run.json"
