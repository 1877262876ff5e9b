# nodeagent_test(NAME <name> LABEL unit|privileged SOURCES ... LIBS ...)
#
# unit:       no root needed; also built and run under ASan+UBSan (target unit_tests).
# privileged: needs root; skips with a message on a developer machine without
#             root, fails under CI=true (see tests/support/privileged.h).
add_custom_target(unit_tests)

function(nodeagent_test)
  cmake_parse_arguments(T "" "NAME;LABEL;TIMEOUT" "SOURCES;LIBS" ${ARGN})
  add_executable(${T_NAME} ${T_SOURCES})
  target_link_libraries(${T_NAME} PRIVATE ${T_LIBS} GTest::gtest GTest::gtest_main)
  target_include_directories(${T_NAME} PRIVATE ${CMAKE_SOURCE_DIR}/tests)
  set_target_properties(${T_NAME} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${T_NAME} COMMAND ${T_NAME})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 300)
  endif()
  set_tests_properties(${T_NAME} PROPERTIES LABELS ${T_LABEL} TIMEOUT ${T_TIMEOUT}
    ENVIRONMENT "NODEAGENT_BIN_DIR=${CMAKE_BINARY_DIR}/bin")
  if(T_LABEL STREQUAL "unit")
    add_dependencies(unit_tests ${T_NAME})
  endif()
endfunction()
