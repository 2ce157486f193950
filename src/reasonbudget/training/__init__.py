"""Training pipelines, beside the methods that use what they make: the testbed world's models (LMs, PRM,
length predictor), length predictors for other models, and TALE's budget estimator. Nothing below imports this
package."""
