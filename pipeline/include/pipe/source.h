// A data source (the graph's `data:` block): the class list and, per split, an indexable
// list of samples. Listing is cheap and serial; `load` does the I/O and runs in parallel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipe/sample.h"

namespace pipeline {

class Source {
 public:
  virtual ~Source() = default;
  virtual const std::vector<std::string>& classes() const = 0;
  virtual int64_t size(Split split) const = 0;
  // Metadata only: id, label, split, origin. Must be cheap; called in sample order.
  virtual Sample describe(Split split, int64_t index) const = 0;
  // Fills `bytes` or `image`. Thread-safe. Throws SampleError for unreadable data.
  virtual void load(Sample& sample) const = 0;
  // Identity for cache fingerprints: changes whenever the data or the split would change
  // (paths + sizes + mtimes, split parameters).
  virtual std::string identity() const = 0;
};

}  // namespace pipeline
