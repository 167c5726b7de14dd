# Locates onnxruntime's C/C++ API headers (they are not in the onnxruntime wheel).
#
# Order: the ONNXOPT_ORT_INCLUDE environment variable (or CMake variable); the system's
# /usr/include/onnxruntime (Debian 13+, Ubuntu 25.04+ with libonnxruntime-dev); else Debian
# trixie's libonnxruntime-dev fetched by package name with apt into the build folder, without
# touching the system's apt configuration or state: a private sources folder, lists and cache,
# the mirror taken from the system's own Debian sources, the Release file checked with the
# system's Debian archive keyring.  Any failure stops the configure step with one message that
# says what failed and how to provide the headers.
set(ONNXOPT_ORT_MIN_API 21)
set(ONNXOPT_ORT_DEB_SUITE trixie)
set(ONNXOPT_ORT_DEB_PACKAGE libonnxruntime-dev)

function(_onnxopt_ort_fail what)
  message(FATAL_ERROR
    "onnxopt: cannot get onnxruntime's C/C++ API headers: ${what}\n"
    "Provide them and reinstall, either:\n"
    "  * set ONNXOPT_ORT_INCLUDE to a folder holding onnxruntime_cxx_api.h (API version >= ${ONNXOPT_ORT_MIN_API}, "
    "e.g. the include/ folder of an onnxruntime >= 1.21 release, or /usr/include/onnxruntime from Debian's "
    "${ONNXOPT_ORT_DEB_PACKAGE}), or\n"
    "  * set ONNXOPT_NO_NATIVE=1 to install onnxopt without its native kernels (models then run on the "
    "ONNX-function fallbacks).")
endfunction()

# Sets <out> to the folder holding onnxruntime_cxx_api.h under <dir> ("" if none).
function(_onnxopt_ort_header_dir dir out)
  set(found "")
  foreach(cand "${dir}" "${dir}/onnxruntime" "${dir}/include/onnxruntime" "${dir}/include")
    if(EXISTS "${cand}/onnxruntime_cxx_api.h" AND EXISTS "${cand}/onnxruntime_c_api.h")
      set(found "${cand}")
      break()
    endif()
  endforeach()
  set(${out} "${found}" PARENT_SCOPE)
endfunction()

# The first Debian archive URI (not the security one) in the system's apt sources.
function(_onnxopt_debian_mirror out)
  if(DEFINED ENV{ONNXOPT_DEBIAN_MIRROR} AND NOT "$ENV{ONNXOPT_DEBIAN_MIRROR}" STREQUAL "")
    set(${out} "$ENV{ONNXOPT_DEBIAN_MIRROR}" PARENT_SCOPE)
    return()
  endif()
  file(GLOB deb822 "/etc/apt/sources.list.d/*.sources")
  file(GLOB one_line "/etc/apt/sources.list.d/*.list")
  set(uris "")
  foreach(f IN LISTS deb822)
    file(STRINGS "${f}" lines REGEX "^[ \t]*URIs:")
    foreach(l IN LISTS lines)
      string(REGEX REPLACE "^[ \t]*URIs:[ \t]*" "" l "${l}")
      separate_arguments(l UNIX_COMMAND "${l}")
      list(APPEND uris ${l})
    endforeach()
  endforeach()
  foreach(f "/etc/apt/sources.list" ${one_line})
    if(EXISTS "${f}")
      file(STRINGS "${f}" lines REGEX "^[ \t]*deb[ \t]")
      foreach(l IN LISTS lines)
        string(REGEX REPLACE "\\[[^]]*\\]" "" l "${l}")
        separate_arguments(l UNIX_COMMAND "${l}")
        list(GET l 1 uri)
        list(APPEND uris "${uri}")
      endforeach()
    endif()
  endforeach()
  foreach(uri IN LISTS uris)
    if(uri MATCHES "^(https?|file)://.*/debian/?$")
      string(REGEX REPLACE "/$" "" uri "${uri}")
      set(${out} "${uri}" PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} "" PARENT_SCOPE)
endfunction()

function(_onnxopt_run step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err
                  TIMEOUT 600 WORKING_DIRECTORY "${_onnxopt_ort_wd}")
  if(NOT rc EQUAL 0)
    string(STRIP "${out}\n${err}" log)
    _onnxopt_ort_fail("${step} failed (${rc}):\n${log}\n")
  endif()
endfunction()

function(_onnxopt_fetch_ort_headers root out)
  set(dir "${root}/onnxruntime")
  if(EXISTS "${dir}/onnxruntime_cxx_api.h")
    set(${out} "${dir}" PARENT_SCOPE)
    return()
  endif()
  find_program(ONNXOPT_APT_GET apt-get)
  find_program(ONNXOPT_DPKG dpkg)
  if(NOT ONNXOPT_APT_GET OR NOT ONNXOPT_DPKG)
    _onnxopt_ort_fail("not found in /usr/include/onnxruntime, and this is no Debian-like system (apt-get and dpkg "
                      "are needed to fetch ${ONNXOPT_ORT_DEB_PACKAGE} from Debian ${ONNXOPT_ORT_DEB_SUITE}).")
  endif()
  _onnxopt_debian_mirror(mirror)
  if(mirror STREQUAL "")
    _onnxopt_ort_fail("no Debian archive found in the system's apt sources to fetch ${ONNXOPT_ORT_DEB_PACKAGE} "
                      "(suite ${ONNXOPT_ORT_DEB_SUITE}) from; ONNXOPT_DEBIAN_MIRROR=<archive URI> names one.")
  endif()
  set(apt "${root}/apt")
  file(REMOVE_RECURSE "${apt}")
  file(MAKE_DIRECTORY "${apt}/sources" "${apt}/prefs" "${apt}/lists/partial" "${apt}/cache/archives/partial"
                      "${apt}/debs")
  set(keyring "/usr/share/keyrings/debian-archive-keyring.gpg")
  if(EXISTS "${keyring}")
    set(opts "signed-by=${keyring}")
  else()
    message(WARNING "onnxopt: ${keyring} missing; fetching ${ONNXOPT_ORT_DEB_PACKAGE} without signature check")
    set(opts "trusted=yes")
  endif()
  file(WRITE "${apt}/sources/onnxopt-${ONNXOPT_ORT_DEB_SUITE}.list"
       "deb [${opts}] ${mirror} ${ONNXOPT_ORT_DEB_SUITE} main\n")
  set(apt_opts
    -o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=${apt}/sources"
    -o "Dir::Etc::Preferences=/dev/null" -o "Dir::Etc::PreferencesParts=${apt}/prefs"
    -o "Dir::State::Lists=${apt}/lists" -o "Dir::Cache=${apt}/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root" -o "Acquire::Languages=none" -o "Acquire::Retries=3")
  message(STATUS "onnxopt: fetching ${ONNXOPT_ORT_DEB_PACKAGE} (Debian ${ONNXOPT_ORT_DEB_SUITE}) from ${mirror}")
  set(_onnxopt_ort_wd "${apt}/debs")
  _onnxopt_run("apt-get update (private lists for Debian ${ONNXOPT_ORT_DEB_SUITE})"
               "${ONNXOPT_APT_GET}" -q ${apt_opts} update)
  _onnxopt_run("apt-get download ${ONNXOPT_ORT_DEB_PACKAGE}" "${ONNXOPT_APT_GET}" -q ${apt_opts} download
               "${ONNXOPT_ORT_DEB_PACKAGE}")
  file(GLOB debs "${apt}/debs/${ONNXOPT_ORT_DEB_PACKAGE}_*.deb")
  if(NOT debs)
    _onnxopt_ort_fail("apt-get download ${ONNXOPT_ORT_DEB_PACKAGE} left no .deb in ${apt}/debs")
  endif()
  list(GET debs 0 deb)
  _onnxopt_run("dpkg -x ${deb}" "${ONNXOPT_DPKG}" -x "${deb}" "${apt}/root")
  _onnxopt_ort_header_dir("${apt}/root/usr/include" found)
  if(found STREQUAL "")
    _onnxopt_ort_fail("${deb} holds no onnxruntime_cxx_api.h")
  endif()
  file(COPY "${found}/" DESTINATION "${dir}")
  file(REMOVE_RECURSE "${apt}")
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()

# Sets <out> to the folder holding onnxruntime_c_api.h and onnxruntime_cxx_api.h.
function(onnxopt_find_ort_headers out)
  if(DEFINED ENV{ONNXOPT_ORT_INCLUDE} AND NOT "$ENV{ONNXOPT_ORT_INCLUDE}" STREQUAL "")
    set(ONNXOPT_ORT_INCLUDE "$ENV{ONNXOPT_ORT_INCLUDE}")
  endif()
  if(ONNXOPT_ORT_INCLUDE)
    _onnxopt_ort_header_dir("${ONNXOPT_ORT_INCLUDE}" dir)
    if(dir STREQUAL "")
      _onnxopt_ort_fail("ONNXOPT_ORT_INCLUDE=${ONNXOPT_ORT_INCLUDE} holds no onnxruntime_c_api.h and onnxruntime_cxx_api.h.")
    endif()
    set(how "ONNXOPT_ORT_INCLUDE")
  elseif(EXISTS "/usr/include/onnxruntime/onnxruntime_cxx_api.h")
    set(dir "/usr/include/onnxruntime")
    set(how "system")
  else()
    _onnxopt_fetch_ort_headers("${CMAKE_BINARY_DIR}/_deps/ort-headers" dir)
    set(how "Debian ${ONNXOPT_ORT_DEB_SUITE} ${ONNXOPT_ORT_DEB_PACKAGE}")
  endif()
  file(STRINGS "${dir}/onnxruntime_c_api.h" line REGEX "^#define ORT_API_VERSION [0-9]+")
  string(REGEX MATCH "[0-9]+$" version "${line}")
  if(version STREQUAL "" OR version LESS ${ONNXOPT_ORT_MIN_API})
    _onnxopt_ort_fail("${dir}/onnxruntime_c_api.h has API version '${version}', need >= ${ONNXOPT_ORT_MIN_API}.")
  endif()
  message(STATUS "onnxopt: onnxruntime headers (API ${version}, ${how}): ${dir}")
  set(${out} "${dir}" PARENT_SCOPE)
endfunction()
