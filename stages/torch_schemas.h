// The schemas of the LibTorch stages (convbase, dense_head, train_base), kept out of their
// torch translation units so that code built without LibTorch (the clang fuzz targets in
// tests/fuzz/) validates graphs against the real schemas, not copies that could drift.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "pipe/params.h"
#include "pipe/stage.h"

namespace pipeline::torchu {

// A ParamSpec in one call (stage schemas).
ParamSpec param(std::string name, ParamType type, std::string doc,
                std::optional<ParamValue> def, std::optional<double> min = std::nullopt,
                std::optional<double> max = std::nullopt);

// The params `rescale`, `mean`, `std` that torchu::image_norm() reads.
std::vector<ParamSpec> image_norm_params();

}  // namespace pipeline::torchu

namespace pipeline::stages {

StageSchema convbase_schema();
StageSchema dense_head_schema();
StageSchema train_base_schema();

}  // namespace pipeline::stages
