# rkl_embed_migrations(TARGET <lib> DIR <dir> NAMESPACE <c++ namespace> [HEADER <path>])
#
# Compiles the schema migrations in DIR (files NNN_name.sql) into C++, so a binary ships
# its own schema and there is nothing to install next to it. Generates, at build time:
#
#   <HEADER>   declares   std::span<const rkl::db::Migration> <NAMESPACE>::Migrations();
#   a .cc      defining it, with each file's bytes in a constant array, in version order.
#
# HEADER defaults to the namespace as a path: NAMESPACE rkl::kms → "rkl/kms/migrations.h".
# If TARGET exists the generated files are added to it; otherwise a STATIC library of that
# name is created. Either way it links rkl::db and exports the header's include directory.
#
# Editing a .sql file regenerates the code on the next build; adding, removing or renaming
# one re-runs the configure step (CONFIGURE_DEPENDS glob), whose manifest then changes and
# regenerates it. A file whose name does not match NNN_name.sql, or two files with one
# version, fail the build.
#
# Example (services/kms/CMakeLists.txt):
#   rkl_embed_migrations(TARGET kms_migrations DIR ${CMAKE_CURRENT_SOURCE_DIR}/migrations
#                        NAMESPACE rkl::kms)
#   target_link_libraries(kms_core PUBLIC kms_migrations)
#   // C++: #include "rkl/kms/migrations.h"
#   //      RKL_ASSIGN_OR_RETURN(int n, rkl::db::ApplyMigrations(pool, rkl::kms::Migrations()));
#
# This same file is also the generator, run as `cmake -P embed_migrations.cmake` with
# -DMANIFEST, -DOUT_CC, -DOUT_H, -DHEADER and -DNAMESPACE (see the end of the file).

if(NOT CMAKE_SCRIPT_MODE_FILE)
  set_property(GLOBAL PROPERTY RKL_EMBED_MIGRATIONS_SCRIPT "${CMAKE_CURRENT_LIST_FILE}")

  function(rkl_embed_migrations)
    cmake_parse_arguments(M "" "TARGET;DIR;NAMESPACE;HEADER" "" ${ARGN})
    if(NOT M_TARGET OR NOT M_DIR OR NOT M_NAMESPACE)
      message(FATAL_ERROR "rkl_embed_migrations: TARGET, DIR and NAMESPACE are required")
    endif()
    if(NOT M_NAMESPACE MATCHES "^[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)*$")
      message(FATAL_ERROR "rkl_embed_migrations: '${M_NAMESPACE}' is not a C++ namespace")
    endif()
    if(NOT M_HEADER)
      string(REPLACE "::" "/" M_HEADER "${M_NAMESPACE}")
      set(M_HEADER "${M_HEADER}/migrations.h")
    endif()
    get_filename_component(dir "${M_DIR}" ABSOLUTE BASE_DIR "${CMAKE_CURRENT_SOURCE_DIR}")
    if(NOT IS_DIRECTORY "${dir}")
      message(FATAL_ERROR "rkl_embed_migrations: ${dir} is not a directory")
    endif()
    get_property(script GLOBAL PROPERTY RKL_EMBED_MIGRATIONS_SCRIPT)

    file(GLOB sql_files CONFIGURE_DEPENDS "${dir}/*.sql")
    list(SORT sql_files)
    set(out "${CMAKE_CURRENT_BINARY_DIR}/rkl_migrations/${M_TARGET}")
    set(manifest "${out}/manifest.txt")
    # Rewritten only when the list of files changes, so its timestamp is the dependency
    # that notices an added or removed file.
    string(REPLACE ";" "\n" manifest_text "${sql_files}")
    file(CONFIGURE OUTPUT "${manifest}" CONTENT "${manifest_text}\n" @ONLY)

    set(out_h "${out}/include/${M_HEADER}")
    set(out_cc "${out}/migrations.cc")
    add_custom_command(
      OUTPUT "${out_h}" "${out_cc}"
      COMMAND ${CMAKE_COMMAND} -DMANIFEST=${manifest} -DOUT_CC=${out_cc} -DOUT_H=${out_h}
              -DHEADER=${M_HEADER} -DNAMESPACE=${M_NAMESPACE} -P ${script}
      DEPENDS ${sql_files} "${manifest}" "${script}"
      COMMENT "Embedding migrations from ${dir} into ${M_NAMESPACE}::Migrations()"
      VERBATIM)

    if(NOT TARGET ${M_TARGET})
      add_library(${M_TARGET} STATIC)
    endif()
    target_sources(${M_TARGET} PRIVATE "${out_cc}" "${out_h}")
    target_include_directories(${M_TARGET} PUBLIC "${out}/include")
    target_link_libraries(${M_TARGET} PUBLIC rkl::db)
  endfunction()
  return()
endif()

# ---- Generator (script mode) ------------------------------------------------------------
# Script mode starts with no policies set; take the project's.
cmake_minimum_required(VERSION 3.25)
foreach(var MANIFEST OUT_CC OUT_H HEADER NAMESPACE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "embed_migrations.cmake: -D${var}=... is required")
  endif()
endforeach()

file(STRINGS "${MANIFEST}" files)
set(arrays "")
set(entries "")
set(seen_versions "")
set(index 0)
foreach(file IN LISTS files)
  get_filename_component(base "${file}" NAME)
  if(NOT base MATCHES "^([0-9]+)_([A-Za-z0-9_]+)\\.sql$")
    message(FATAL_ERROR "migration file '${file}' is not named NNN_name.sql "
                        "(digits, underscore, letters/digits/underscores)")
  endif()
  set(name "${CMAKE_MATCH_2}")
  # Leading zeros are for sorting only: 007 is version 7.
  string(REGEX REPLACE "^0+([0-9])" "\\1" version "${CMAKE_MATCH_1}")
  if(version IN_LIST seen_versions)
    message(FATAL_ERROR "two migration files have version ${version}: '${base}' and another")
  endif()
  list(APPEND seen_versions ${version})

  # Bytes as a char array rather than a string literal: any content survives, with no
  # delimiter or escaping to get wrong.
  file(READ "${file}" hex HEX)
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "'\\\\x\\1'," bytes "${hex}")
  # 16 bytes a line. (CMake regexes have no {n} repetition, hence the REPEAT.)
  string(REPEAT "'\\\\x[0-9a-f][0-9a-f]'," 16 line_pattern)
  string(REGEX REPLACE "(${line_pattern})" "\\1\n    " bytes "${bytes}")
  string(APPEND arrays "// ${base}\nconstexpr char kSql${index}[] = {\n    ${bytes}'\\0'};\n\n")
  string(APPEND entries
         "    {${version}, \"${name}\", std::string_view(kSql${index}, sizeof(kSql${index}) - 1)},\n")
  math(EXPR index "${index} + 1")
endforeach()

# Versions sorted numerically, whatever the file-name padding was.
set(sorted_versions ${seen_versions})
list(SORT sorted_versions COMPARE NATURAL)
if(NOT sorted_versions STREQUAL seen_versions)
  message(FATAL_ERROR "migration file names do not sort in version order (${seen_versions}): "
                      "pad the numbers to one width")
endif()

set(header "// Generated by rkl_embed_migrations (libs/db/cmake/embed_migrations.cmake).
// Do not edit: change the .sql files instead.
#pragma once

#include <span>

#include \"rkl/db/migration.h\"

namespace ${NAMESPACE} {

// The service's schema migrations in version order, compiled into the binary.
std::span<const ::rkl::db::Migration> Migrations();

}  // namespace ${NAMESPACE}
")

if(index EQUAL 0)
  set(body "std::span<const ::rkl::db::Migration> Migrations() { return {}; }\n")
else()
  set(body "namespace {

${arrays}constexpr ::rkl::db::Migration kMigrations[] = {
${entries}};

}  // namespace

std::span<const ::rkl::db::Migration> Migrations() { return kMigrations; }
")
endif()

set(source "// Generated by rkl_embed_migrations (libs/db/cmake/embed_migrations.cmake).
// Do not edit: change the .sql files instead.
#include \"${HEADER}\"

#include <string_view>

namespace ${NAMESPACE} {

${body}
}  // namespace ${NAMESPACE}
")

file(WRITE "${OUT_H}" "${header}")
file(WRITE "${OUT_CC}" "${source}")
