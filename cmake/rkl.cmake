# Helpers shared by every CMakeLists in rkl.
#
#   rkl_add_test(NAME name SOURCES a_test.cc ... LIBS rkl::x ...)
#     A pure unit test (*_test.cc): no network beyond loopback, no database.
#   rkl_add_pgtest(NAME name SOURCES a_pgtest.cc ... LIBS ...)
#     A test against a real PostgreSQL cluster. ctest starts one throwaway cluster
#     (fixture "pg") before the first pgtest and removes it after the last; the test
#     finds it through the RKL_TEST_PG_DSN_FILE environment variable.

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
