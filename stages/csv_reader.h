// RFC 4180 reading for the csv source: records with each field's position, so that every
// problem can be reported as FILE:LINE:COL.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace pipeline::stages {

struct CsvField {
  std::string text;  // unquoted
  int line = 1, col = 1;  // where the field starts, 1-based
};

struct CsvRow {
  int line = 1;
  std::vector<CsvField> fields;
};

// Fields split by ',', records by LF or CRLF; a quoted field ("...") may hold commas, line
// breaks and "" (one quote). Blank lines are skipped; a UTF-8 byte order mark is dropped.
// Throws std::runtime_error "FILE:LINE:COL: ..." for an unterminated quote, text after a
// closing quote, or a quote inside an unquoted field.
std::vector<CsvRow> parse_csv(const std::string& text, const std::string& file);

struct CsvColumns {
  size_t count = 0;                   // fields per row
  std::map<std::string, size_t> index;  // column name -> position, for the names used
};

// The header: each of `required` must be there, `optional` may be; a name twice is an error,
// other columns are unused (with a warning, as a misspelt name would otherwise pass silently).
CsvColumns csv_columns(const CsvRow& header, const std::string& file, const std::vector<std::string>& required,
                       const std::vector<std::string>& optional);

}  // namespace pipeline::stages
