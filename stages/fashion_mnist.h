// The fashion_mnist source's pose rule, shared with its tests.
#pragma once

#include <cstdint>

#include "augment.h"

namespace pipeline::stages {

// The fixed pose of image `file_index` of the train (t10k = false) or t10k file: drawn from
// a stream keyed on split_seed and the image, so it is the same in every run, epoch and
// split selection (per_class) that includes the image.
AugmentDraws fashion_mnist_pose(const PoseRanges& ranges, uint64_t split_seed, bool t10k, int64_t file_index);

}  // namespace pipeline::stages
