# Optional CUDA kernels (runtime/cuda/): on only with ONNXOPT_CUDA=1 (environment) or
# -DONNXOPT_CUDA=ON, so ordinary installs and CI never need nvcc or cuBLAS.
#
# * nvcc: CMake's CUDA language support (CUDACXX / CMAKE_CUDA_COMPILER, else nvcc on PATH or in
#   /usr/local/cuda/bin).  Architectures: ONNXOPT_CUDA_ARCHS (default "90-real;90-virtual":
#   sm_90 code for H100/H200 plus compute_90 PTX that newer GPUs JIT-compile).
# * cudart is linked statically (CUDA::cudart_static): the library then needs only the driver
#   (libcuda.so.1, which cudart opens on the first CUDA call), so it still loads into a CPU-only
#   onnxruntime on a machine without CUDA and its CPU kernels keep working.
# * cuBLAS: only its headers are needed to build.  The library opens libcublas.so.<major> at
#   run time, when the first CUDA kernel is created (cuda/cublas_loader.cc says where it looks),
#   so there is no load-time dependency on it either.  The headers come from, in order:
#   ONNXOPT_CUBLAS_ROOT (environment or CMake variable: a folder holding include/cublas_v2.h,
#   e.g. site-packages/nvidia/cu13, or a site-packages folder, or an unpacked nvidia-cublas
#   wheel), the CUDA toolkit's own include folder, else the nvidia-cublas wheel fetched with
#   `pip download --no-deps` into ONNXOPT_CUBLAS_CACHE (environment or CMake variable; default
#   <build>/_deps/cublas), where a wheel already present is reused and not fetched again.
# Any missing piece stops the configure step with one message saying what and how to fix it.
set(ONNXOPT_CUBLAS_REQUIREMENT "nvidia-cublas>=13,<14")

function(_onnxopt_cuda_fail what)
  message(FATAL_ERROR
    "onnxopt: ONNXOPT_CUDA is on but ${what}\n"
    "Either fix that, or build without the CUDA kernels (unset ONNXOPT_CUDA / -DONNXOPT_CUDA=OFF).")
endfunction()

# Sets <out> to the folder that holds include/cublas_v2.h under <root> ("" if none).
function(_onnxopt_cublas_dir root out)
  set(found "")
  foreach(cand "${root}" "${root}/nvidia/cu13" "${root}/nvidia/cublas" "${root}/cu13")
    if(EXISTS "${cand}/include/cublas_v2.h")
      set(found "${cand}")
      break()
    endif()
  endforeach()
  set(${out} "${found}" PARENT_SCOPE)
endfunction()

function(_onnxopt_fetch_cublas cache out)
  file(GLOB wheels "${cache}/nvidia_cublas-13.*.whl")
  if(NOT wheels)
    if(NOT Python_EXECUTABLE)
      find_package(Python COMPONENTS Interpreter)
    endif()
    if(NOT Python_EXECUTABLE)
      _onnxopt_cuda_fail("cuBLAS headers were not found and no Python interpreter is there to fetch the "
                         "${ONNXOPT_CUBLAS_REQUIREMENT} wheel; set ONNXOPT_CUBLAS_ROOT.")
    endif()
    message(STATUS "onnxopt: fetching the ${ONNXOPT_CUBLAS_REQUIREMENT} wheel (about 450 MB) into ${cache}")
    file(MAKE_DIRECTORY "${cache}")
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -m pip download -q --no-deps --only-binary=:all: -d "${cache}"
              "${ONNXOPT_CUBLAS_REQUIREMENT}"
      RESULT_VARIABLE rc OUTPUT_VARIABLE pip_out ERROR_VARIABLE pip_err TIMEOUT 1800)
    file(GLOB wheels "${cache}/nvidia_cublas-13.*.whl")
    if(NOT rc EQUAL 0 OR NOT wheels)
      string(STRIP "${pip_out}\n${pip_err}" log)
      _onnxopt_cuda_fail("fetching ${ONNXOPT_CUBLAS_REQUIREMENT} with pip failed (${rc}):\n${log}\n"
                         "Set ONNXOPT_CUBLAS_ROOT to an installed or unpacked nvidia-cublas instead.")
    endif()
  endif()
  list(SORT wheels)
  list(GET wheels -1 wheel)
  get_filename_component(stem "${wheel}" NAME)
  string(REGEX REPLACE "\\.whl$" "" stem "${stem}")
  set(dest "${cache}/${stem}")
  if(NOT EXISTS "${dest}/nvidia/cu13/include/cublas_v2.h")
    # headers only: the libraries are opened at run time from the installed nvidia-cublas
    file(ARCHIVE_EXTRACT INPUT "${wheel}" DESTINATION "${dest}" PATTERNS "nvidia/cu13/include/*")
  endif()
  set(${out} "${dest}/nvidia/cu13" PARENT_SCOPE)
endfunction()

# nvcc and the CUDA language, at directory scope (enable_language does not work inside a function).
include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  _onnxopt_cuda_fail("no CUDA compiler (nvcc) was found.  Put nvcc on PATH or set CUDACXX=/path/to/nvcc.")
endif()
if(DEFINED ENV{ONNXOPT_CUDA_ARCHS} AND NOT "$ENV{ONNXOPT_CUDA_ARCHS}" STREQUAL "")
  set(CMAKE_CUDA_ARCHITECTURES "$ENV{ONNXOPT_CUDA_ARCHS}")
elseif(NOT CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "90-real;90-virtual")
endif()
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

# Adds the CUDA kernels to <target> and defines ONNXOPT_WITH_CUDA on it.
function(onnxopt_add_cuda target)
  if(DEFINED ENV{ONNXOPT_CUBLAS_ROOT} AND NOT "$ENV{ONNXOPT_CUBLAS_ROOT}" STREQUAL "")
    set(ONNXOPT_CUBLAS_ROOT "$ENV{ONNXOPT_CUBLAS_ROOT}")
  endif()
  if(ONNXOPT_CUBLAS_ROOT)
    _onnxopt_cublas_dir("${ONNXOPT_CUBLAS_ROOT}" cublas)
    if(cublas STREQUAL "")
      _onnxopt_cuda_fail("ONNXOPT_CUBLAS_ROOT=${ONNXOPT_CUBLAS_ROOT} holds no include/cublas_v2.h "
                         "(nor nvidia/cu13/include/cublas_v2.h).")
    endif()
    set(how "ONNXOPT_CUBLAS_ROOT")
  else()
    set(cublas "")
    foreach(inc IN LISTS CUDAToolkit_INCLUDE_DIRS)
      if(EXISTS "${inc}/cublas_v2.h")
        get_filename_component(cublas "${inc}" DIRECTORY)
        set(how "CUDA toolkit")
        break()
      endif()
    endforeach()
    if(cublas STREQUAL "")
      if(DEFINED ENV{ONNXOPT_CUBLAS_CACHE} AND NOT "$ENV{ONNXOPT_CUBLAS_CACHE}" STREQUAL "")
        set(ONNXOPT_CUBLAS_CACHE "$ENV{ONNXOPT_CUBLAS_CACHE}")
      endif()
      if(NOT ONNXOPT_CUBLAS_CACHE)
        set(ONNXOPT_CUBLAS_CACHE "${CMAKE_BINARY_DIR}/_deps/cublas")
      endif()
      _onnxopt_fetch_cublas("${ONNXOPT_CUBLAS_CACHE}" cublas)
      set(how "${ONNXOPT_CUBLAS_REQUIREMENT} wheel in ${ONNXOPT_CUBLAS_CACHE}")
    endif()
  endif()
  file(STRINGS "${cublas}/include/cublas_api.h" major_line REGEX "^#define CUBLAS_VER_MAJOR [0-9]+")
  string(REGEX MATCH "[0-9]+$" cublas_major "${major_line}")
  if(NOT cublas_major STREQUAL "13")
    _onnxopt_cuda_fail("${cublas}/include/cublas_api.h is cuBLAS '${cublas_major}', need 13 (CUDA 13).")
  endif()
  message(STATUS "onnxopt: CUDA kernels on: nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures "
                 "${CMAKE_CUDA_ARCHITECTURES}, cuBLAS ${cublas_major} headers (${how}): ${cublas}/include")

  # The device code is a static library of its own, so that the host flags of <target> (-Wall,
  # -fvisibility-inlines-hidden ...) never reach nvcc; the host wrappers, which include
  # onnxruntime's headers, are ordinary C++ sources of <target>.
  set(dir "${CMAKE_CURRENT_SOURCE_DIR}/cuda")
  add_library(onnxopt_cuda_kernels STATIC "${dir}/address_conv_impl.cu" "${dir}/perforated_conv_impl.cu")
  target_include_directories(onnxopt_cuda_kernels PRIVATE "${dir}")
  set_target_properties(onnxopt_cuda_kernels PROPERTIES CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
                        POSITION_INDEPENDENT_CODE ON CUDA_RUNTIME_LIBRARY Static CUDA_VISIBILITY_PRESET hidden)
  target_compile_options(onnxopt_cuda_kernels PRIVATE -O3)

  target_sources(${target} PRIVATE
    "${dir}/cuda_common.cc" "${dir}/cublas_loader.cc" "${dir}/gemm_cuda.cc"
    "${dir}/address_conv_cuda.cc" "${dir}/perforated_conv_cuda.cc")
  target_include_directories(${target} PRIVATE "${dir}" "${cublas}/include" ${CUDAToolkit_INCLUDE_DIRS})
  target_compile_definitions(${target} PRIVATE ONNXOPT_WITH_CUDA=1 ONNXOPT_CUBLAS_MAJOR=${cublas_major}
                             "ONNXOPT_CUBLAS_BUILD_LIBDIR=\"${cublas}/lib\"")
  target_link_libraries(${target} PRIVATE onnxopt_cuda_kernels CUDA::cudart_static ${CMAKE_DL_LIBS})
endfunction()
