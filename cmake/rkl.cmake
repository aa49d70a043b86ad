# Helpers shared by every CMakeLists in rkl.
#
#   rkl_add_test(NAME name SOURCES a_test.cc ... LIBS rkl::x ...)
#     A pure unit test (*_test.cc): no network beyond loopback, no database.
#   rkl_add_pgtest(NAME name SOURCES a_pgtest.cc ... LIBS ...)
#     A test against a real PostgreSQL cluster. ctest starts one throwaway cluster
#     (fixture "pg") before the first pgtest and removes it after the last; the test
#     finds it through the RKL_TEST_PG_DSN_FILE environment variable.

# rkl_add_library(<name> [SOURCES a.cc ...] [EXCLUDE b.cc ...])
#   The library rkl_<name> (alias rkl::<name>) of a folder of libs/, with include/ as its
#   public include directory: made of every src/*.cc (globbed: a new source file needs no
#   CMake change) but those named after EXCLUDE, or of only the src/ files named after
#   SOURCES. The caller adds its dependencies with target_link_libraries.
function(rkl_add_library name)
  cmake_parse_arguments(L "" "" "SOURCES;EXCLUDE" ${ARGN})
  if(L_SOURCES)
    list(TRANSFORM L_SOURCES PREPEND ${CMAKE_CURRENT_SOURCE_DIR}/src/ OUTPUT_VARIABLE sources)
  else()
    file(GLOB sources CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/*.cc)
    foreach(excluded IN LISTS L_EXCLUDE)
      list(REMOVE_ITEM sources ${CMAKE_CURRENT_SOURCE_DIR}/src/${excluded})
    endforeach()
  endif()
  add_library(rkl_${name} STATIC ${sources})
  add_library(rkl::${name} ALIAS rkl_${name})
  target_include_directories(rkl_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
endfunction()

function(rkl_add_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gmock GTest::gtest_main)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} --gtest_color=no)
  set_tests_properties(${T_NAME} PROPERTIES LABELS "unit;${T_LABELS}" TIMEOUT 600)
endfunction()

function(rkl_add_pgtest)
  cmake_parse_arguments(T "" "NAME" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} rkl::testing GTest::gtest GTest::gmock
                                          GTest::gtest_main)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME} --gtest_color=no)
  set_tests_properties(${T_NAME} PROPERTIES
    LABELS "pg;${T_LABELS}" TIMEOUT 900
    FIXTURES_REQUIRED rkl_pg
    ENVIRONMENT "RKL_TEST_PG_DSN_FILE=${CMAKE_BINARY_DIR}/test-pg/dsn")
endfunction()
