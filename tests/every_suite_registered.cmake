# CTest runs the test executables one suite at a time (tests/CMakeLists.txt), with suites read
# from the sources by a pattern. This script fails when the executable EXE holds a suite that is
# not in SUITES (a TEST written in a way the pattern missed would otherwise never run).
#   cmake -DEXE=path -DSUITES=A,B,... -P every_suite_registered.cmake
string(REPLACE "," ";" SUITES "${SUITES}")
cmake_minimum_required(VERSION 3.22)  # IN_LIST
execute_process(COMMAND ${EXE} --gtest_list_tests OUTPUT_VARIABLE listing RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} --gtest_list_tests exited ${rc}")
endif()
string(REPLACE "\n" ";" lines "${listing}")
set(missing "")
set(count 0)
foreach(line ${lines})
  # Suite lines start in column 0 and end with '.'; "Prefix/Suite/0." for parameterised suites.
  if(line MATCHES "^([A-Za-z0-9_/]+)\\.")
    string(REGEX REPLACE "^([A-Za-z0-9_]+/)?([A-Za-z0-9_]+)(/[0-9]+)?\\..*" "\\2" suite "${line}")
    math(EXPR count "${count} + 1")
    if(NOT suite IN_LIST SUITES)
      list(APPEND missing ${suite})
    endif()
  endif()
endforeach()
if(count EQUAL 0)
  message(FATAL_ERROR "${EXE} lists no test suite")
endif()
if(missing)
  message(FATAL_ERROR "suites not registered with CTest: ${missing}")
endif()
message(STATUS "${count} suites of ${EXE}, all registered")
