// A sink that can tell its loss so far in the current pass, for the progress line. A
// separate interface (the runner asks with dynamic_cast), like ModelExport and LearningRate.
#pragma once

namespace pipeline {

class RunningLoss {
 public:
  virtual ~RunningLoss() = default;
  // The mean loss over the samples consumed so far in this pass; < 0 before the first batch.
  // Called from another thread than consume().
  virtual double running_loss() const = 0;
};

}  // namespace pipeline
