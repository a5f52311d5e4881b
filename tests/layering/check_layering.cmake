# Builds OK_TARGET (must succeed) and BAD_TARGET (must fail, naming HEADER) in BUILD_DIR.
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${OK_TARGET}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "control target ${OK_TARGET} (a legal include) failed to build:\n${out}${err}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target ${BAD_TARGET}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${BAD_TARGET} includes ${HEADER} across the layering and still compiled")
endif()
string(FIND "${out}${err}" "${HEADER}" at)
if(at EQUAL -1)
  message(FATAL_ERROR "${BAD_TARGET} failed, but not on ${HEADER}:\n${out}${err}")
endif()
message(STATUS "${BAD_TARGET}: rejected as expected (${HEADER} is not visible)")
