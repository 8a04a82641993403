"""Reset-free forward/backward fine-tuning on a task pair (after RoboFuME): the loop, the classifier's
data and adaptation, the run state; the job is `policies.jobs.reset_free`."""
