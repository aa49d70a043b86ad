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

# rkl_add_service_library(<name> SOURCES src/a.cc ... [PUBLIC ...] [PRIVATE ...])
#   A static library of files of the caller's src/ folder, which is also its public include
#   directory (a service keeps its headers beside its sources).
function(rkl_add_service_library name)
  cmake_parse_arguments(L "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(${name} STATIC ${L_SOURCES})
  target_include_directories(${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(${name} PUBLIC ${L_PUBLIC} PRIVATE ${L_PRIVATE})
endfunction()

# rkl_add_daemon(<name> LIBS ...)
#   An executable of src/main.cc, installed into bin/.
function(rkl_add_daemon name)
  cmake_parse_arguments(D "" "" "LIBS" ${ARGN})
  add_executable(${name} ${CMAKE_CURRENT_SOURCE_DIR}/src/main.cc)
  target_link_libraries(${name} PRIVATE ${D_LIBS})
  install(TARGETS ${name} RUNTIME DESTINATION bin)
endfunction()

# rkl_add_service(<svc> CORE src/a.cc ... [CORE_PUBLIC ...] [CORE_PRIVATE ...]
#                 PG src/b.cc ... [PG_LIBS ...] GRPC src/c.cc ... [GRPC_LIBS ...]
#                 [DAEMON_LIBS ...])
#   The four parts of every service, each over the one before it:
#     <svc>_migrations  migrations/NNN_name.sql, embedded (namespace rkl::<svc>)
#     <svc>_core        the CORE sources: logic and the interfaces of its storage and peers
#     <svc>_pg          the PG sources, over <svc>_core, rkl::db and <svc>_migrations
#     <svc>_grpc        the GRPC sources, the service's adapter, over <svc>_core, rkl::rpc
#                       and rkl::proto
#     rkl-<svc>         the daemon (src/main.cc), over the three libraries
#   The *_LIBS lists name what a part links beyond these (PUBLIC, but for CORE_PRIVATE).
function(rkl_add_service svc)
  cmake_parse_arguments(S "" ""
    "CORE;CORE_PUBLIC;CORE_PRIVATE;PG;PG_LIBS;GRPC;GRPC_LIBS;DAEMON_LIBS" ${ARGN})
  rkl_embed_migrations(TARGET ${svc}_migrations DIR ${CMAKE_CURRENT_SOURCE_DIR}/migrations
                       NAMESPACE rkl::${svc})
  rkl_add_service_library(${svc}_core SOURCES ${S_CORE}
    PUBLIC ${S_CORE_PUBLIC} PRIVATE ${S_CORE_PRIVATE})
  rkl_add_service_library(${svc}_pg SOURCES ${S_PG}
    PUBLIC ${svc}_core rkl::db ${svc}_migrations ${S_PG_LIBS} PRIVATE absl::strings)
  rkl_add_service_library(${svc}_grpc SOURCES ${S_GRPC}
    PUBLIC ${svc}_core rkl::rpc rkl::proto ${S_GRPC_LIBS} PRIVATE absl::strings)
  rkl_add_daemon(rkl-${svc} LIBS ${svc}_grpc ${svc}_pg ${svc}_core ${S_DAEMON_LIBS})
endfunction()

# rkl_check_core_links(<target>...): stops the configure step when a service core reaches,
# directly or through any library it links, gRPC, rkl::rpc, rkl::db or libpqxx — a core has
# no gRPC and no SQL (docs/developer-guide.md "Layout and targets").
function(_rkl_collect_links target out_var)
  set(seen ${${out_var}})
  if(NOT TARGET ${target})
    return()
  endif()
  get_target_property(aliased ${target} ALIASED_TARGET)
  if(aliased)
    set(target ${aliased})
  endif()
  if(target IN_LIST seen)
    return()
  endif()
  list(APPEND seen ${target})
  get_target_property(type ${target} TYPE)
  set(links "")
  if(NOT type STREQUAL "INTERFACE_LIBRARY")
    get_target_property(direct ${target} LINK_LIBRARIES)
    if(direct)
      list(APPEND links ${direct})
    endif()
  endif()
  get_target_property(iface ${target} INTERFACE_LINK_LIBRARIES)
  if(iface)
    list(APPEND links ${iface})
  endif()
  foreach(link IN LISTS links)
    string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" link "${link}")
    _rkl_collect_links(${link} seen)
  endforeach()
  set(${out_var} ${seen} PARENT_SCOPE)
endfunction()

function(rkl_check_core_links)
  foreach(core IN LISTS ARGN)
    set(reached "")
    _rkl_collect_links(${core} reached)
    foreach(forbidden gRPC::grpc++ gRPC::grpc rkl_rpc rkl_db PkgConfig::PQXX)
      if(TARGET ${forbidden})
        get_target_property(aliased ${forbidden} ALIASED_TARGET)
        if(aliased)
          set(forbidden ${aliased})
        endif()
      endif()
      if(forbidden IN_LIST reached)
        message(FATAL_ERROR "${core} links ${forbidden}: a service core has no gRPC and no SQL")
      endif()
    endforeach()
  endforeach()
endfunction()
