# Finds the Debian-packaged dependencies. With OTGPU_DEPS_PREFIX (a folder of .deb
# files unpacked with `dpkg -x`, see scripts/make-offline-prefix) they are found
# there instead of in /usr, for GPU hosts without package access.
include(GNUInstallDirs)

if(OTGPU_DEPS_PREFIX)
  get_filename_component(_p "${OTGPU_DEPS_PREFIX}" ABSOLUTE)
  list(PREPEND CMAKE_PREFIX_PATH "${_p}/usr" "${_p}/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}/cmake"
       "${_p}/usr/share/cmake" "${_p}/usr/lib/cmake")
  # GoogleTest's Debian package ships sources only in googletest; libgtest-dev
  # ships the static libraries and config under usr/lib/<arch>.
  list(PREPEND CMAKE_PREFIX_PATH "${_p}/usr/lib/${CMAKE_LIBRARY_ARCHITECTURE}")
  message(STATUS "otgpu: searching dependencies in ${_p}")
endif()

find_package(fmt REQUIRED)
find_package(OpenMP REQUIRED COMPONENTS CXX)


if(OTGPU_BUILD_CLI)
  find_package(CLI11 REQUIRED)
  find_package(nlohmann_json 3.9 REQUIRED)
endif()
if(OTGPU_BUILD_TESTS)
  find_package(GTest REQUIRED)
  find_package(Python3 COMPONENTS Interpreter)
endif()
