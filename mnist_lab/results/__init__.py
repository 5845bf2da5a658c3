"""The report's results drawn from runs on disk: figures, tables, the model comparison, the calibration
studies, and the numbers the course report published."""
