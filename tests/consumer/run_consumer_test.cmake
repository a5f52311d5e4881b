# Builds one examples/ project the way a downstream user would: installs the freshly
# built tree into a scratch prefix, configures EXAMPLE_SRC against it with
# find_package(otgpu), builds it and runs PROGRAM (with the arguments in ARGS).
#   cmake -DOTGPU_BUILD_DIR=... -DEXAMPLE_SRC=... -DPROGRAM=... [-DARGS=a;b]
#         -DWORK_DIR=... [-DDEPS_PREFIX=...] -P run_consumer_test.cmake
foreach(_var OTGPU_BUILD_DIR EXAMPLE_SRC PROGRAM WORK_DIR)
  if(NOT ${_var})
    message(FATAL_ERROR "run_consumer_test.cmake: ${_var} is not set")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${OTGPU_BUILD_DIR} --prefix ${WORK_DIR}/prefix
                RESULT_VARIABLE rc OUTPUT_QUIET)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "install failed (${rc})")
endif()
set(_prefix_path ${WORK_DIR}/prefix)
if(DEPS_PREFIX)
  list(APPEND _prefix_path ${DEPS_PREFIX}/usr)
endif()
string(REPLACE ";" "\\;" _prefix_arg "${_prefix_path}")
execute_process(COMMAND ${CMAKE_COMMAND} -S ${EXAMPLE_SRC} -B ${WORK_DIR}/build
                        -DCMAKE_PREFIX_PATH=${_prefix_arg} -DCMAKE_BUILD_TYPE=Release
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM}: configure failed (${rc})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK_DIR}/build RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM}: build failed (${rc})")
endif()
execute_process(COMMAND ${WORK_DIR}/build/${PROGRAM} ${ARGS} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} ${ARGS}: run failed (${rc})")
endif()
