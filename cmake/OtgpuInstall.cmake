# Installs the library, headers and an exported otgpu::otgpu target so that
# downstream projects can `find_package(otgpu CONFIG REQUIRED)`.
include(CMakePackageConfigHelpers)

install(TARGETS otgpu EXPORT otgpuTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/core/include/otgpu DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT otgpuTargets NAMESPACE otgpu:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/otgpu)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/otgpuConfig.cmake.in
  ${PROJECT_BINARY_DIR}/otgpuConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/otgpu)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/otgpuConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/otgpuConfig.cmake ${PROJECT_BINARY_DIR}/otgpuConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/otgpu)
