"""What users run on a loaded model: bulk inversion and its vector files, evaluation."""
