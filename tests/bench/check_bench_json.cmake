# Checks a bench.json written by `pipe bench`: every figure present, each with all fields
# of the right type. Timing targets are not asserted (the machine is shared and noisy).
# Usage: cmake -DJSON=path/to/bench.json -P check_bench_json.cmake
cmake_minimum_required(VERSION 3.19)  # string(JSON)
if(NOT EXISTS "${JSON}")
  message(FATAL_ERROR "no bench output at '${JSON}'")
endif()
file(READ "${JSON}" doc)

foreach(key machine runtime)
  string(JSON type ERROR_VARIABLE err TYPE "${doc}" ${key})
  if(err OR NOT type STREQUAL "STRING")
    message(FATAL_ERROR "bench.json: top-level '${key}' missing or not a string")
  endif()
endforeach()
string(JSON type ERROR_VARIABLE err TYPE "${doc}" threads)
if(err OR NOT type STREQUAL "NUMBER")
  message(FATAL_ERROR "bench.json: top-level 'threads' missing or not a number")
endif()

string(JSON count ERROR_VARIABLE err LENGTH "${doc}" figures)
if(err OR count EQUAL 0)
  message(FATAL_ERROR "bench.json: no 'figures' array (${err})")
endif()

# Name prefixes of every figure (the decode+augment names end in the thread count).
set(expected
  "extraction small_vgg 32px"
  "extraction vgg16 64px"
  "cached head epoch"
  "head epoch vs its GEMM arithmetic"
  "augmented epoch small_vgg 32px"
  "determinism cost"
  "decode+augment 28px"
  "decode+augment 150px"
  "peak RSS, regime B"
  "peak RSS, regime A"
  "cache read resident memory"
  "fast path small_vgg 32px"
  "fast path vgg16 64px"
  "system time share"
  "regime A run on a warm cache")
set(found "")
math(EXPR last "${count} - 1")
foreach(i RANGE ${last})
  string(JSON name ERROR_VARIABLE err GET "${doc}" figures ${i} name)
  if(err)
    message(FATAL_ERROR "bench.json: figure ${i} has no name")
  endif()
  foreach(field_type value:NUMBER bound:NUMBER ratio:NUMBER target:NUMBER met:BOOLEAN unit:STRING name:STRING)
    string(REPLACE ":" ";" ft "${field_type}")
    list(GET ft 0 field)
    list(GET ft 1 want)
    string(JSON type ERROR_VARIABLE err TYPE "${doc}" figures ${i} ${field})
    if(err OR NOT type STREQUAL want)
      message(FATAL_ERROR "bench.json: figure '${name}': field '${field}' missing or not ${want}")
    endif()
  endforeach()
  # A figure that ran has a positive bound and value; the one exception is the system-time
  # share, whose value is legitimately 0 when a short (--smoke) extraction spends less than a
  # clock tick in the kernel (its bound, the CPU seconds, shows that it ran).
  foreach(field value bound)
    string(JSON v GET "${doc}" figures ${i} ${field})
    string(FIND "${name}" "system time share" share)
    if(NOT v GREATER 0 AND NOT (field STREQUAL "value" AND share EQUAL 0 AND v EQUAL 0))
      message(FATAL_ERROR "bench.json: figure '${name}': ${field} = ${v}, not measured")
    endif()
  endforeach()
  foreach(prefix IN LISTS expected)
    string(FIND "${name}" "${prefix}" at)
    if(at EQUAL 0)
      list(APPEND found "${prefix}")
    endif()
  endforeach()
endforeach()
foreach(prefix IN LISTS expected)
  if(NOT prefix IN_LIST found)
    message(FATAL_ERROR "bench.json: missing figure '${prefix}'")
  endif()
endforeach()
message(STATUS "bench.json: ${count} figures, all fields present")
