// `pipe predict RUN PATH...`: classify image files with the model a run exported (model.pt,
// stages/script_export.h). Files are decoded and resized by the same stages, with the same
// parameters, as the run's evaluation passes (the model's pipe_prepare), so a run's test
// images get exactly the probabilities the run's test pass computed.
#pragma once

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace pipeline {

struct Prediction {
  std::string path;
  std::vector<float> probabilities;  // one per class; empty when `error` is set
  std::string error;                 // why the file could not be classified
};

class Predictor {
 public:
  // `model`: a run directory (its model.pt) or a model file. Throws std::runtime_error
  // naming the file when it is not a pipe model.
  explicit Predictor(const std::string& model);
  ~Predictor();
  const std::vector<std::string>& classes() const;
  // In the order given; batches of `batch` files go through the model together.
  std::vector<Prediction> predict(const std::vector<std::string>& files, int batch) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The files PATHs name: a file as given, a directory's image files (recursive, sorted);
// a PATH that does not exist becomes a Prediction with its error.
std::vector<std::string> image_files(const std::vector<std::string>& paths, std::vector<Prediction>& missing);

struct PredictOptions {
  std::string model;                // run directory or model file
  std::vector<std::string> paths;  // images or directories
  int top = 1;
  int batch = 32;
  bool json = false;                // JSON lines instead of text
};

// Prints one line per file to `out` (path, class, probability; top K pairs), the reason for
// each file that failed to `err`. Returns the exit code: 1 if any file failed, else 0.
int run_predict(const PredictOptions& options, std::FILE* out, std::FILE* err);

}  // namespace pipeline
