// RFC 4180 reading for the csv source (csv_reader.h).
#include "csv_reader.h"

#include <algorithm>
#include <stdexcept>

#include <fmt/format.h>

#include "file_source.h"

namespace pipeline::stages {
namespace {

class Reader {
 public:
  Reader(const std::string& text, const std::string& file) : t_(text), file_(file) {
    if (t_.compare(0, 3, "\xEF\xBB\xBF") == 0) i_ = 3;  // Excel writes a UTF-8 byte order mark
  }

  std::vector<CsvRow> rows() {
    std::vector<CsvRow> out;
    while (i_ < t_.size()) {
      CsvRow row;
      row.line = line_;
      bool quoted_any = false;
      for (;;) {
        quoted_any |= i_ < t_.size() && t_[i_] == '"';
        row.fields.push_back(field());
        if (i_ < t_.size() && t_[i_] == ',') {
          step();
          continue;
        }
        if (i_ < t_.size()) step();  // the line break (CRLF: field() left the LF)
        break;
      }
      const bool blank = row.fields.size() == 1 && row.fields[0].text.empty() && !quoted_any;
      if (!blank) out.push_back(std::move(row));
    }
    return out;
  }

 private:
  [[noreturn]] void fail(int line, int col, const std::string& why) const {
    throw std::runtime_error(fmt::format("{}:{}:{}: {}", file_, line, col, why));
  }
  void step() {
    if (t_[i_++] == '\n') {
      ++line_;
      col_ = 1;
    } else {
      ++col_;
    }
  }
  bool at_end_of_field() const {
    return i_ == t_.size() || t_[i_] == ',' || t_[i_] == '\n' || (t_[i_] == '\r' && i_ + 1 < t_.size() && t_[i_ + 1] == '\n') ||
           (t_[i_] == '\r' && i_ + 1 == t_.size());
  }

  CsvField field() {
    CsvField f;
    f.line = line_;
    f.col = col_;
    if (i_ < t_.size() && t_[i_] == '"') {
      step();
      for (;;) {
        if (i_ == t_.size()) fail(f.line, f.col, "a quoted field that never closes (a quote inside one is written \"\")");
        if (t_[i_] == '"' && (i_ + 1 == t_.size() || t_[i_ + 1] != '"')) break;
        if (t_[i_] == '"') step();  // "" is one quote
        f.text += t_[i_];
        step();
      }
      step();
      if (!at_end_of_field()) fail(line_, col_, "text after a closing quote (a quote inside a field is written \"\")");
    } else {
      while (!at_end_of_field()) {
        if (t_[i_] == '"') fail(line_, col_, "a quote inside an unquoted field (quote the whole field: \"a, b.jpg\")");
        f.text += t_[i_];
        step();
      }
    }
    if (i_ < t_.size() && t_[i_] == '\r') ++i_;  // CR of a CRLF
    return f;
  }

  const std::string& t_;
  const std::string& file_;
  size_t i_ = 0;
  int line_ = 1, col_ = 1;
};

}  // namespace

std::vector<CsvRow> parse_csv(const std::string& text, const std::string& file) { return Reader(text, file).rows(); }

CsvColumns csv_columns(const CsvRow& header, const std::string& file, const std::vector<std::string>& required,
                       const std::vector<std::string>& optional) {
  CsvColumns c;
  c.count = header.fields.size();
  std::vector<std::string> names;
  for (const CsvField& f : header.fields) {
    names.push_back("'" + f.text + "'");
    const bool known = std::count(required.begin(), required.end(), f.text) || std::count(optional.begin(), optional.end(), f.text);
    if (!known) {
      warn(fmt::format("{}:{}:{}: column '{}' is not used (columns: {}{}{})", file, f.line, f.col, f.text,
                       fmt::join(required, ", "), optional.empty() ? "" : ", ", fmt::join(optional, ", ")));
      continue;
    }
    if (!c.index.emplace(f.text, static_cast<size_t>(&f - header.fields.data())).second)
      throw std::runtime_error(fmt::format("{}:{}:{}: column '{}' appears twice in the header", file, f.line, f.col, f.text));
  }
  for (const std::string& r : required)
    if (!c.index.count(r))
      throw std::runtime_error(fmt::format("{}:{}:1: no '{}' column in the header line (want {}{}{}; found {})", file,
                                           header.line, r, fmt::join(required, ","), optional.empty() ? "" : "[,",
                                           optional.empty() ? "" : fmt::format("{}]", fmt::join(optional, ",")),
                                           fmt::join(names, ", ")));
  return c;
}

}  // namespace pipeline::stages
